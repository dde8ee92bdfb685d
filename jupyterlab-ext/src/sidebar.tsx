/**
 * The lab sidebar: pipeline runs, models, experiments and monitoring of the lab the
 * Jupyter server runs in, read from the server extension's REST API. State lives on the
 * widget (not in React hooks) so that commands can drive it: `runStage` starts a stage
 * and polls its progress, promote/rollback/stop ask for confirmation first. Every
 * failure is shown as text in the section it belongs to; nothing throws into JupyterLab.
 */
import { Dialog, ReactWidget, showDialog } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { Widget } from '@lumino/widgets';
import * as React from 'react';

import {
  ApiError,
  Experiment,
  Model,
  ModelVersionInfo,
  Monitoring,
  MonitorCheck,
  Progress,
  Run,
  StageJob,
  Summary,
  postApi,
  requestApi
} from './api';
import { DriftChart, FreshnessChart, QualityChart } from './charts';

type Section = 'summary' | 'runs' | 'models' | 'experiments' | 'monitoring' | 'stage';

/** How often a running stage's progress is read, in milliseconds. */
const POLL_MS = 1000;
/** A stage run is no longer polled after this long (ms); the Refresh button still reads it. */
const POLL_LIMIT_MS = 60 * 60 * 1000;
const FINISHED = new Set(['finished', 'failed', 'skipped', 'error', 'done', 'succeeded', 'exited', 'killed']);

function message(error: unknown): string {
  return error instanceof ApiError || error instanceof Error ? error.message : String(error);
}

/** A duration in seconds as "0.8 s", "12 s", "3 min 5 s". */
export function duration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '–';
  }
  if (seconds < 10) {
    return `${seconds.toFixed(1)} s`;
  }
  if (seconds < 120) {
    return `${Math.round(seconds)} s`;
  }
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

function number(value: unknown): string {
  if (typeof value !== 'number') {
    return value === null || value === undefined ? '–' : String(value);
  }
  return Number.isInteger(value) ? String(value) : value.toPrecision(4);
}

function when(iso: string | null | undefined): string {
  if (!iso) {
    return '–';
  }
  const date = new Date(iso);
  return isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/** Whether a job record (whatever fields the server gives) says the job is still going. */
export function jobRunning(job: Record<string, unknown> | null | undefined): boolean {
  if (!job) {
    return false;
  }
  if (typeof job.running === 'boolean') {
    return job.running;
  }
  if (job.returncode !== undefined && job.returncode !== null) {
    return false;
  }
  const status = typeof job.status === 'string' ? job.status : '';
  return status !== '' && !FINISHED.has(status);
}

/** A dialog body with one text field, the reason written to the audit log. */
class ReasonBody extends Widget implements Dialog.IBodyWidget<string> {
  private readonly input: HTMLInputElement;

  constructor(question: string, placeholder: string) {
    super();
    this.addClass('lab-dialog-body');
    const text = document.createElement('p');
    text.textContent = question;
    const label = document.createElement('label');
    label.textContent = 'Reason (kept in the audit log) ';
    this.input = document.createElement('input');
    this.input.type = 'text';
    this.input.className = 'jp-mod-styled lab-reason';
    this.input.placeholder = placeholder;
    label.appendChild(this.input);
    this.node.append(text, label);
  }

  getValue(): string {
    return this.input.value.trim();
  }
}

async function confirm(title: string, question: string, action: string, placeholder: string): Promise<string | null> {
  const result = await showDialog({
    title,
    body: new ReasonBody(question, placeholder),
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: action })],
    focusNodeSelector: 'input'
  });
  return result.button.accept ? result.value ?? '' : null;
}

export class LabSidebar extends ReactWidget {
  summary: Summary | null = null;
  runs: Run[] = [];
  models: Model[] = [];
  experiments: Experiment[] = [];
  monitoring: Monitoring | null = null;
  progress: Progress | null = null;
  job: StageJob | null = null;
  errors: Partial<Record<Section, string>> = {};
  notices: Partial<Record<Section, string>> = {};
  loading = false;
  private pollTimer: number | null = null;
  private pollStarted = 0;

  constructor(private readonly docManager: IDocumentManager | null) {
    super();
    this.id = 'lab-sidebar';
    this.addClass('lab-Sidebar');
    this.title.caption = 'lab: runs, models, experiments, monitoring';
  }

  /** Read every section again (each on its own: one failing route leaves the others shown). */
  async refresh(): Promise<void> {
    this.loading = true;
    this.update();
    const load = async <T,>(section: Section, path: string, apply: (value: T) => void): Promise<void> => {
      try {
        apply(await requestApi<T>(path));
        delete this.errors[section];
      } catch (error) {
        this.errors[section] = message(error);
      }
    };
    await Promise.all([
      load<Summary>('summary', 'summary', v => (this.summary = v)),
      load<Run[]>('runs', 'runs?limit=10', v => (this.runs = v ?? [])),
      load<Model[]>('models', 'models', v => (this.models = v ?? [])),
      load<Experiment[]>('experiments', 'experiments', v => (this.experiments = v ?? [])),
      load<Monitoring>('monitoring', 'monitoring', v => (this.monitoring = v))
    ]);
    this.loading = false;
    this.update();
  }

  /** Run the pipeline stage whose notebook is `notebook` (relative to the server root). */
  async runStage(notebook: string): Promise<void> {
    delete this.errors.stage;
    this.notices.stage = `starting the stage of ${notebook}…`;
    this.progress = null;
    this.update();
    try {
      this.job = await postApi<StageJob>('stages/run', { notebook });
      this.notices.stage = `stage ${this.job.stage} started (job ${this.job.job})`;
    } catch (error) {
      this.job = null;
      delete this.notices.stage;
      this.errors.stage = message(error);
      this.update();
      return;
    }
    this.update();
    this.pollStarted = Date.now();
    this.schedulePoll(0);
  }

  private schedulePoll(delay: number): void {
    if (this.pollTimer !== null) {
      window.clearTimeout(this.pollTimer);
    }
    this.pollTimer = window.setTimeout(() => void this.poll(), delay);
  }

  private async poll(): Promise<void> {
    this.pollTimer = null;
    try {
      this.progress = await requestApi<Progress>('progress');
      delete this.errors.stage;
    } catch (error) {
      this.errors.stage = message(error);
    }
    const running = jobRunning(this.progress?.job ?? null);
    if (running && Date.now() - this.pollStarted < POLL_LIMIT_MS) {
      this.update();
      this.schedulePoll(POLL_MS);
      return;
    }
    const status = String(this.progress?.job?.status ?? 'ended');
    this.notices.stage = `stage ${this.job?.stage ?? ''} ${status}`;
    await this.refresh();
  }

  private async promote(model: string, version: number): Promise<void> {
    const reason = await confirm(
      'Promote to champion',
      `Make ${model} v${version} the champion? The gate's promotion criteria apply.`,
      'Promote',
      'why this version'
    );
    if (reason === null) {
      return;
    }
    await this.act('models', `${model} v${version} promoted to champion`, () =>
      postApi(`models/${encodeURIComponent(model)}/promote`, { version, alias: 'champion', reason })
    );
  }

  private async rollback(model: string): Promise<void> {
    const reason = await confirm(
      'Roll back the champion',
      `Move ${model}'s champion back to the version it pointed to before?`,
      'Roll back',
      'why roll back'
    );
    if (reason === null) {
      return;
    }
    await this.act('models', `${model} champion rolled back`, () =>
      postApi(`models/${encodeURIComponent(model)}/rollback`, { alias: 'champion', reason })
    );
  }

  private async stop(experiment: string): Promise<void> {
    const reason = await confirm('Stop the experiment', `Stop ${experiment}? Its traffic goes back to the control.`, 'Stop', 'why stop');
    if (reason === null) {
      return;
    }
    await this.act('experiments', `${experiment} stopped`, () =>
      postApi(`experiments/${encodeURIComponent(experiment)}/stop`, { reason })
    );
  }

  private async act(section: Section, done: string, call: () => Promise<unknown>): Promise<void> {
    try {
      await call();
      this.notices[section] = done;
      delete this.errors[section];
    } catch (error) {
      delete this.notices[section];
      this.errors[section] = message(error);
    }
    await this.refresh();
    // refresh() clears a section's error when its GET succeeds: keep the action's error.
    this.update();
  }

  private open(path: string): void {
    if (this.docManager) {
      this.docManager.openOrReveal(path);
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  dispose(): void {
    if (this.pollTimer !== null) {
      window.clearTimeout(this.pollTimer);
    }
    super.dispose();
  }

  // -- rendering ------------------------------------------------------------------------

  private status(section: Section): JSX.Element | null {
    const error = this.errors[section];
    const notice = this.notices[section];
    return (
      <>
        {error ? <div className="lab-error" data-section={section}>{error}</div> : null}
        {notice ? <div className="lab-notice" data-section={section}>{notice}</div> : null}
      </>
    );
  }

  render(): JSX.Element {
    const summary = this.summary;
    return (
      <div className="lab-SidebarBody">
        <div className="lab-header">
          <span className="lab-title">lab</span>
          <button className="jp-Button jp-mod-styled lab-refresh" onClick={() => void this.refresh()} disabled={this.loading}>
            {this.loading ? 'Loading…' : 'Refresh'}
          </button>
        </div>
        {summary ? (
          <div className="lab-summary">
            <div title={summary.lab}>{summary.lab}</div>
            <div>model: {summary.model ?? '–'}</div>
          </div>
        ) : null}
        {this.status('summary')}
        {this.renderStage()}
        <details open className="lab-section lab-runs">
          <summary>Runs</summary>
          {this.status('runs')}
          {this.renderRuns()}
        </details>
        <details open className="lab-section lab-models">
          <summary>Models</summary>
          {this.status('models')}
          {this.renderModels()}
        </details>
        <details open className="lab-section lab-experiments">
          <summary>Experiments</summary>
          {this.status('experiments')}
          {this.renderExperiments()}
        </details>
        <details open className="lab-section lab-monitoring">
          <summary>Monitoring</summary>
          {this.status('monitoring')}
          {this.renderMonitoring()}
        </details>
      </div>
    );
  }

  private renderStage(): JSX.Element | null {
    if (!this.job && !this.errors.stage && !this.notices.stage) {
      return null;
    }
    const stages = this.progress?.stages ?? [];
    const shown = this.job ? stages.filter(s => s.name === this.job?.stage) : stages;
    return (
      <div className="lab-section lab-stage-run">
        <div className="lab-subtitle">Stage run</div>
        {this.status('stage')}
        {this.progress?.job?.status === 'failed' ? (
          <details className="lab-log" open>
            <summary>its output</summary>
            <pre>{String(this.progress.job.error ?? '') + String(this.progress.job.log_tail ?? '')}</pre>
          </details>
        ) : null}
        {(shown.length ? shown : stages).map(s => {
          const share = s.total ? Math.min(1, (s.done ?? 0) / s.total) : null;
          return (
            <div key={s.name} className="lab-progress" data-stage={s.name} data-status={s.status}>
              <div>
                <b>{s.name}</b> <span className={`lab-status lab-status-${s.status}`}>{s.status}</span>{' '}
                {s.done !== null && s.done !== undefined
                  ? `${number(s.done)}${s.total ? ` / ${number(s.total)}` : ''} ${s.unit ?? ''}`
                  : ''}{' '}
                {s.what ?? ''} {s.seconds !== null && s.seconds !== undefined ? `· ${duration(s.seconds)}` : ''}
              </div>
              {share !== null ? (
                <div className="lab-bar">
                  <div className="lab-bar-fill" style={{ width: `${(share * 100).toFixed(1)}%` }} />
                </div>
              ) : null}
            </div>
          );
        })}
      </div>
    );
  }

  private renderRuns(): JSX.Element {
    if (!this.runs.length) {
      return <div className="lab-empty">No pipeline runs yet: run `lab run`, or a stage's notebook with "lab stage".</div>;
    }
    return (
      <div>
        {this.runs.map(run => (
          <div key={run.id} className="lab-run" data-run={run.id} data-status={run.status}>
            <div className="lab-line lab-run-head">
              <span className={`lab-status lab-status-${run.status}`}>{run.status}</span>
              <code title={run.id}>{run.id.slice(0, 8)}</code>
              <span>{duration(run.seconds)}</span>
              <span className="lab-muted">{when(run.started_at)}</span>
            </div>
            {run.stages.map((stage, i) => (
              <div key={`${stage.name}-${i}`} className="lab-line lab-stage" data-stage={stage.name} data-status={stage.status}>
                <span className="lab-stage-name">{stage.name}</span>
                <span className={`lab-status lab-status-${stage.status}`}>{stage.status}</span>
                <span className="lab-muted">{stage.cached ? 'cached' : stage.status === 'running' ? '' : 'ran'}</span>
                <span>{duration(stage.seconds)}</span>
                {stage.notebook ? (
                  <a
                    href="#"
                    className="lab-open-notebook"
                    title={`open the executed notebook ${stage.notebook}`}
                    onClick={event => {
                      event.preventDefault();
                      this.open(stage.notebook as string);
                    }}
                  >
                    notebook
                  </a>
                ) : null}
                {stage.error ? <div className="lab-error">{stage.error}</div> : null}
              </div>
            ))}
          </div>
        ))}
      </div>
    );
  }

  private renderVersion(model: Model, v: ModelVersionInfo): JSX.Element {
    const champion = model.aliases.champion === v.version;
    const metrics = Object.entries(v.metrics ?? {});
    return (
      <div key={v.version} className="lab-model-row" data-model={model.name} data-version={v.version}>
        <div className="lab-line">
          <b>v{v.version}</b>
          {(v.aliases ?? []).map(alias => (
            <span key={alias} className="lab-alias">
              {alias}
            </span>
          ))}
          <span className="lab-muted">
            {v.flavor ?? ''} · {when(v.created_at)}
          </span>
          {champion ? null : (
            <button className="jp-Button jp-mod-styled jp-mod-small lab-promote" onClick={() => void this.promote(model.name, v.version)}>
              Promote
            </button>
          )}
        </div>
        <div className="lab-metrics">
          {metrics.map(([key, value]) => (
            <span key={key} className="lab-metric">
              {key} <b>{number(value)}</b>
            </span>
          ))}
        </div>
        {v.lineage && Object.keys(v.lineage).length ? (
          <details className="lab-lineage">
            <summary>lineage</summary>
            <pre>{JSON.stringify(v.lineage, null, 1)}</pre>
          </details>
        ) : null}
      </div>
    );
  }

  private renderModels(): JSX.Element {
    if (!this.models.length) {
      return <div className="lab-empty">No registered models yet.</div>;
    }
    return (
      <div>
        {this.models.map(model => (
          <div key={model.name} className="lab-model" data-model={model.name}>
            <div className="lab-model-head">
              <b>{model.name}</b>{' '}
              {Object.entries(model.aliases ?? {}).map(([alias, version]) => (
                <span key={alias} className="lab-alias" data-alias={alias}>
                  {alias} → v{version}
                </span>
              ))}{' '}
              {model.aliases?.champion !== undefined ? (
                <button className="jp-Button jp-mod-styled lab-rollback" onClick={() => void this.rollback(model.name)}>
                  Roll back
                </button>
              ) : null}
            </div>
            {[...model.versions].sort((a, b) => b.version - a.version).map(v => this.renderVersion(model, v))}
          </div>
        ))}
      </div>
    );
  }

  private renderExperiments(): JSX.Element {
    if (!this.experiments.length) {
      return <div className="lab-empty">No experiments or flags.</div>;
    }
    return (
      <div>
        {this.experiments.map(exp => (
          <div key={exp.name} className="lab-experiment" data-experiment={exp.name} data-status={exp.status}>
            <div>
              <b>{exp.name}</b> <span className="lab-muted">{exp.kind}</span>{' '}
              <span className={`lab-status lab-status-${exp.status}`}>{exp.status}</span>
              {exp.unit ? <span className="lab-muted"> · unit {exp.unit}</span> : null}{' '}
              {exp.status === 'running' ? (
                <button className="jp-Button jp-mod-styled lab-stop" onClick={() => void this.stop(exp.name)}>
                  Stop
                </button>
              ) : null}
            </div>
            <table className="lab-table">
              <tbody>
                {exp.variants.map(variant => (
                  <tr key={variant.name}>
                    <td>{variant.name}</td>
                    <td>{number(variant.weight)}</td>
                    <td>{variant.holdout ? 'holdout' : ''}</td>
                  </tr>
                ))}
              </tbody>
            </table>
            {exp.stats ? (
              <details className="lab-stats">
                <summary>stats</summary>
                <pre>{JSON.stringify(exp.stats, null, 1)}</pre>
              </details>
            ) : null}
            {exp.guardrails && exp.guardrails.length ? (
              <div className="lab-muted">
                guardrails: {exp.guardrails.map(guardrailName).join(', ')}
              </div>
            ) : null}
          </div>
        ))}
      </div>
    );
  }

  private renderMonitoring(): JSX.Element {
    const monitoring = this.monitoring;
    if (!monitoring) {
      return <div className="lab-empty">Nothing read yet.</div>;
    }
    const monitor = monitoring.monitor;
    const checks: [string, MonitorCheck][] = monitor?.checks
      ? Array.isArray(monitor.checks)
        ? monitor.checks.map((c, i) => [c.name ?? String(i), c] as [string, MonitorCheck])
        : Object.entries(monitor.checks)
      : [];
    return (
      <div>
        {monitor ? (
          <div className="lab-monitor">
            <div>
              {monitor.model ?? ''}
              {monitor.version !== undefined && monitor.version !== null ? ` v${monitor.version}` : ''}{' '}
              {monitor.start ?? ''}..{monitor.end ?? ''}{' '}
              <span className={`lab-status lab-status-${monitor.status ?? ''}`}>{monitor.status ?? ''}</span>
            </div>
            {checks.map(([name, check]) => (
              <div key={name} className="lab-check" data-check={name} data-status={check.status}>
                <div className="lab-line">
                  <b>{name}</b>
                  <span className={`lab-status lab-status-${check.status}`}>{check.status}</span>
                </div>
                <div className="lab-muted">{check.detail}</div>
              </div>
            ))}
          </div>
        ) : (
          <div className="lab-empty">No monitor summary yet (`lab monitor run` writes data/monitor.json).</div>
        )}
        {monitoring.monitor_error ? <div className="lab-error">{monitoring.monitor_error}</div> : null}
        <FreshnessChart rows={monitoring.freshness} />
        <QualityChart rows={monitoring.quality} info={monitoring.quality_info} />
        <DriftChart drift={monitoring.drift} />
        {monitoring.reports?.length ? (
          <div className="lab-reports">
            reports:{' '}
            {monitoring.reports.map(report => (
              <a key={report.name} href={report.url} target="_blank" rel="noopener noreferrer" className="lab-report">
                {report.name}
              </a>
            ))}
          </div>
        ) : null}
      </div>
    );
  }
}

/** A guardrail as its name (the server gives objects with a name, or plain strings). */
function guardrailName(g: unknown): string {
  if (typeof g === 'string') {
    return g;
  }
  const named = g as { name?: unknown; breached?: unknown };
  return named && typeof named.name === 'string' ? `${named.name}${named.breached ? ' (breached)' : ''}` : JSON.stringify(g);
}
