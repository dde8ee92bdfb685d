/**
 * The Monitoring section's plots: small inline SVG charts drawn from the rows the server's
 * `GET lab/api/monitoring` gives (drift per column, freshness per feature view, live
 * quality per window). Each takes whatever the server sent (`unknown`), keeps only the
 * rows whose fields have the right types, and says "No ... yet" when none is left: a
 * missing or half-written monitor summary never throws. Colours are JupyterLab's theme
 * variables (style/base.css), so the charts follow the light and dark themes.
 */
import * as React from 'react';

/** The SVG user-space width every chart is drawn in; it scales to the sidebar (max-width in CSS). */
const WIDTH = 320;

/** Text for a length of time in seconds: "45 s", "12 min", "3.5 h", "2.1 d". */
export function span(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '–';
  }
  const s = Math.abs(seconds);
  const round = (v: number): string => (v < 10 && !Number.isInteger(v) ? v.toFixed(1) : String(Math.round(v)));
  if (s < 120) {
    return `${round(seconds)} s`;
  }
  if (s < 2 * 3600) {
    return `${round(seconds / 60)} min`;
  }
  if (s < 2 * 86400) {
    return `${round(seconds / 3600)} h`;
  }
  return `${round(seconds / 86400)} d`;
}

function short(name: string, max: number): string {
  return name.length > max ? `${name.slice(0, max - 1)}…` : name;
}

function num(value: unknown): number | null {
  return typeof value === 'number' && isFinite(value) ? value : null;
}

// -- drift ---------------------------------------------------------------------------------

interface DriftBar {
  column: string;
  score: number;
  drifted: boolean;
  method: string;
}

/** Drift records as bars, whatever their container: a list of records or a map by column. */
export function driftBars(drift: unknown): DriftBar[] {
  const records: [string, unknown][] = Array.isArray(drift)
    ? drift.map((r, i) => [String((r as { column?: unknown })?.column ?? i), r])
    : drift && typeof drift === 'object'
      ? Object.entries(drift as Record<string, unknown>)
      : [];
  const bars: DriftBar[] = [];
  for (const [column, record] of records) {
    const r = record as { score?: unknown; drifted?: unknown; method?: unknown };
    if (r && typeof r.score === 'number' && isFinite(r.score)) {
      bars.push({ column, score: r.score, drifted: Boolean(r.drifted), method: String(r.method ?? '') });
    }
  }
  return bars;
}

/** Per-column drift scores as a small inline SVG bar chart; drifted columns in the error colour. */
export function DriftChart(props: { drift: unknown }): JSX.Element | null {
  const bars = driftBars(props.drift);
  if (!bars.length) {
    return <div className="lab-empty">No drift recorded yet.</div>;
  }
  const max = Math.max(...bars.map(b => Math.abs(b.score)), 1e-12);
  const row = 16;
  const labelWidth = 160;
  const barWidth = 120;
  return (
    <div className="lab-drift lab-chart">
      <div className="lab-subtitle">drift per column</div>
      <svg
        width="100%"
        viewBox={`0 0 ${labelWidth + barWidth + 40} ${bars.length * row + 4}`}
        preserveAspectRatio="xMinYMin meet"
        role="img"
        aria-label="drift per column"
      >
        {bars.map((bar, i) => (
          <g key={bar.column} transform={`translate(0, ${i * row + 2})`} className="lab-drift-bar" data-column={bar.column}>
            <title>{`${bar.column}: ${bar.method} ${bar.score.toPrecision(3)}${bar.drifted ? ' (drifted)' : ''}`}</title>
            <text x={labelWidth - 4} y={row - 5} textAnchor="end" className="lab-drift-label">
              {short(bar.column, 22)}
            </text>
            <rect
              x={labelWidth}
              y={2}
              height={row - 5}
              width={Math.max(1, (Math.abs(bar.score) / max) * barWidth)}
              className={bar.drifted ? 'lab-drift-drifted' : 'lab-drift-ok'}
            />
            <text x={labelWidth + barWidth + 4} y={row - 5} className="lab-drift-label">
              {bar.score.toPrecision(2)}
            </text>
          </g>
        ))}
      </svg>
    </div>
  );
}

// -- freshness -----------------------------------------------------------------------------

/** One feature view of the monitor's freshness check (the server's `freshness` rows; seconds). */
export interface FreshnessBar {
  view: string;
  age: number | null;
  ageKind: string;
  ageMax: number | null;
  limit: number | null;
  breachRate: number | null;
  maxBreachRate: number | null;
  requests: number;
  breached: boolean;
  materialized: boolean;
}

/** The server's freshness rows as bars; rows without a view name are left out. */
export function freshnessBars(rows: unknown): FreshnessBar[] {
  if (!Array.isArray(rows)) {
    return [];
  }
  const bars: FreshnessBar[] = [];
  for (const row of rows) {
    const r = (row ?? {}) as Record<string, unknown>;
    if (typeof r.view !== 'string' || !r.view) {
      continue;
    }
    bars.push({
      view: r.view,
      age: num(r.age_s),
      ageKind: typeof r.age_kind === 'string' ? r.age_kind : '',
      ageMax: num(r.age_max_s),
      limit: num(r.limit_s),
      breachRate: num(r.breach_rate),
      maxBreachRate: num(r.max_breach_rate),
      requests: num(r.requests) ?? 0,
      breached: Boolean(r.breached),
      materialized: r.materialized !== false
    });
  }
  return bars;
}

function freshnessTitle(bar: FreshnessBar): string {
  const parts = [bar.view + (bar.breached ? ' (breached)' : '')];
  if (bar.age === null) {
    parts.push(bar.materialized ? 'no age known yet' : 'never materialized');
  } else if (bar.ageKind === 'lag') {
    parts.push(`lag ${span(bar.age)} (newest event; no served request)`);
  } else {
    parts.push(`median served age ${span(bar.age)}, oldest ${span(bar.ageMax)} over ${bar.requests} requests`);
  }
  parts.push(bar.limit === null ? 'no freshness objective' : `objective ${span(bar.limit)}`);
  if (bar.breachRate !== null) {
    const tolerated = bar.maxBreachRate !== null ? ` (tolerated ${(bar.maxBreachRate * 100).toFixed(1)}%)` : '';
    parts.push(`${(bar.breachRate * 100).toFixed(1)}% of requests past it${tolerated}`);
  }
  return parts.join('; ');
}

/**
 * Freshness per feature view as horizontal bars: the bar is the median age of the values
 * served in the window (or, with no request, the view's lag), the whisker the oldest, the
 * dashed tick the view's freshness objective; a view the check breached in the error colour.
 */
export function FreshnessChart(props: { rows: unknown }): JSX.Element {
  const bars = freshnessBars(props.rows);
  if (!bars.length) {
    return <div className="lab-empty lab-freshness-empty">No freshness per feature view yet.</div>;
  }
  const row = 18;
  const labelWidth = 118;
  const barWidth = 120;
  const scale = Math.max(...bars.flatMap(b => [b.age ?? 0, b.ageMax ?? 0, b.limit ?? 0]), 1e-9);
  const x = (seconds: number): number => labelWidth + (Math.max(0, seconds) / scale) * barWidth;
  const objectives = bars.some(b => b.limit !== null);
  return (
    <div className="lab-freshness lab-chart">
      <div className="lab-subtitle">freshness per feature view</div>
      <svg
        width="100%"
        viewBox={`0 0 ${WIDTH} ${bars.length * row + 4}`}
        preserveAspectRatio="xMinYMin meet"
        role="img"
        aria-label="freshness per feature view"
      >
        {bars.map((bar, i) => {
          const value =
            bar.age === null
              ? bar.materialized
                ? 'no age yet'
                : 'never materialized'
              : `${bar.ageKind === 'lag' ? 'lag ' : ''}${span(bar.age)}${bar.limit !== null ? ` / ${span(bar.limit)}` : ''}`;
          return (
            <g
              key={bar.view}
              transform={`translate(0, ${i * row + 2})`}
              className={`lab-fresh-row${bar.breached ? ' lab-fresh-row-breached' : ''}`}
              data-view={bar.view}
              data-breached={bar.breached ? 'true' : 'false'}
              data-age={bar.age ?? ''}
              data-limit={bar.limit ?? ''}
            >
              <title>{freshnessTitle(bar)}</title>
              <text x={labelWidth - 4} y={row - 6} textAnchor="end" className="lab-chart-label">
                {short(bar.view, 20)}
              </text>
              {bar.age !== null ? (
                <rect
                  x={labelWidth}
                  y={3}
                  height={row - 8}
                  width={Math.max(1, x(bar.age) - labelWidth)}
                  className={bar.breached ? 'lab-fresh-breached' : 'lab-fresh-ok'}
                />
              ) : null}
              {bar.age !== null && bar.ageMax !== null && bar.ageMax > bar.age ? (
                <line x1={x(bar.age)} x2={x(bar.ageMax)} y1={row / 2 - 1} y2={row / 2 - 1} className="lab-fresh-max" />
              ) : null}
              {bar.limit !== null ? (
                <line x1={x(bar.limit)} x2={x(bar.limit)} y1={0} y2={row - 2} className="lab-fresh-limit" />
              ) : null}
              <text
                x={bar.age === null ? labelWidth : labelWidth + barWidth + 6}
                y={row - 6}
                className={`lab-chart-label${bar.breached ? ' lab-chart-label-breached' : ''}`}
              >
                {value}
              </text>
            </g>
          );
        })}
      </svg>
      <div className="lab-chart-note">
        bar: median served age (or lag) · whisker: oldest{objectives ? ' · dashed: objective' : ' · no view declares an objective'}
      </div>
    </div>
  );
}

// -- live quality --------------------------------------------------------------------------

/** One window's value of one quality metric of one model version (the server's `quality` rows). */
export interface QualityPoint {
  version: number;
  window: number;
  start: string;
  end: string | null;
  metric: string;
  value: number;
  labelled: number | null;
}

/** What the server says about where the quality rows come from (`quality_info`). */
export interface QualityInfoLike {
  source?: string | null;
  run_id?: string | null;
  as_of?: string | null;
  window_s?: number | null;
  metrics?: string[];
  tests?: Record<string, { loss?: string | null; metric?: string | null; status?: string | null; degraded?: boolean }>;
}

const METRIC_NAMES: Record<string, string> = {
  roc_auc: 'AUC',
  average_precision: 'AP',
  precision_at_k: 'precision@k',
  log_loss: 'log loss',
  brier: 'Brier',
  mae: 'MAE',
  rmse: 'RMSE',
  mean_error: 'mean error'
};

/** The metrics whose lower values are better (losses and errors). */
const LOWER_IS_BETTER = new Set(['log_loss', 'brier', 'mae', 'rmse']);

/** The server's quality rows as points; rows with a missing or non-finite field are left out. */
export function qualityPoints(rows: unknown): QualityPoint[] {
  if (!Array.isArray(rows)) {
    return [];
  }
  const points: QualityPoint[] = [];
  for (const row of rows) {
    const r = (row ?? {}) as Record<string, unknown>;
    const version = num(r.version);
    const window = num(r.window);
    const value = num(r.value);
    if (version === null || window === null || value === null || typeof r.metric !== 'string') {
      continue;
    }
    points.push({
      version,
      window,
      start: typeof r.window_start === 'string' ? r.window_start : '',
      end: typeof r.window_end === 'string' ? r.window_end : null,
      metric: r.metric,
      value,
      labelled: num(r.n_labelled)
    });
  }
  return points;
}

/** The metrics to plot: those the server names first (`quality_info.metrics`), else the first present; at most two. */
export function plottedMetrics(points: QualityPoint[], info: QualityInfoLike | null | undefined): string[] {
  const present = new Set(points.map(p => p.metric));
  const wanted = (info?.metrics ?? []).filter(m => present.has(m));
  const fallback = Object.keys(METRIC_NAMES).filter(m => present.has(m));
  return (wanted.length ? wanted : fallback).slice(0, 2);
}

function windowLabel(iso: string, windowS: number | null | undefined): string {
  if (!iso) {
    return '';
  }
  return windowS && windowS < 86400 ? iso.slice(0, 16).replace('T', ' ') : iso.slice(0, 10);
}

function windowName(windowS: number | null | undefined): string {
  if (!windowS) {
    return 'windows';
  }
  return windowS === 86400 ? 'daily windows' : `${span(windowS)} windows`;
}

/** One metric over windows, one series per version: a line with points (points alone for one window). */
function QualityPlot(props: { metric: string; points: QualityPoint[]; info: QualityInfoLike | null | undefined }): JSX.Element {
  const { metric, points, info } = props;
  const left = 42;
  const right = WIDTH - 10;
  const top = 6;
  const bottom = 62;
  const height = 78;
  const windows = points.map(p => p.window);
  const values = points.map(p => p.value);
  const wMin = Math.min(...windows);
  const wMax = Math.max(...windows);
  const dataMin = Math.min(...values);
  const dataMax = Math.max(...values);
  // The points stay off the frame: the value range widened by 8% each side (5% of the value when flat).
  const pad = dataMax - dataMin > 1e-12 ? (dataMax - dataMin) * 0.08 : Math.abs(dataMax) * 0.05 || 0.01;
  const vMin = dataMin - pad;
  const vMax = dataMax + pad;
  const x = (w: number): number => (wMax === wMin ? (left + right) / 2 : left + ((w - wMin) / (wMax - wMin)) * (right - left));
  const y = (v: number): number => bottom - ((v - vMin) / (vMax - vMin)) * (bottom - top);
  const versions = [...new Set(points.map(p => p.version))].sort((a, b) => a - b);
  const name = METRIC_NAMES[metric] ?? metric;
  const tested = Object.values(info?.tests ?? {}).some(t => t?.metric === metric);
  const first = points.reduce((a, b) => (b.window < a.window ? b : a));
  const last = points.reduce((a, b) => (b.window > a.window ? b : a));
  return (
    <div className="lab-quality-plot" data-metric={metric}>
      <div className="lab-chart-caption">
        {name} per window{LOWER_IS_BETTER.has(metric) ? ' (lower is better)' : ''}
        {tested ? ' · the loss the degradation test watches' : ''}
      </div>
      <svg width="100%" viewBox={`0 0 ${WIDTH} ${height}`} preserveAspectRatio="xMinYMin meet" role="img" aria-label={`${name} per window`}>
        <line x1={left} x2={right} y1={y(dataMax)} y2={y(dataMax)} className="lab-chart-grid" />
        {dataMax > dataMin ? <line x1={left} x2={right} y1={y(dataMin)} y2={y(dataMin)} className="lab-chart-grid" /> : null}
        <line x1={left} x2={right} y1={bottom} y2={bottom} className="lab-chart-axis" />
        <line x1={left} x2={left} y1={top} y2={bottom} className="lab-chart-axis" />
        <text x={left - 4} y={y(dataMax) + 3} textAnchor="end" className="lab-chart-label lab-quality-max">
          {dataMax.toPrecision(3)}
        </text>
        {dataMax > dataMin ? (
          <text x={left - 4} y={y(dataMin) + 3} textAnchor="end" className="lab-chart-label lab-quality-min">
            {dataMin.toPrecision(3)}
          </text>
        ) : null}
        <text x={wMax === wMin ? (left + right) / 2 : left} y={height - 3} textAnchor={wMax === wMin ? 'middle' : 'start'} className="lab-chart-label lab-quality-first">
          {windowLabel(first.start, info?.window_s)}
        </text>
        {wMax !== wMin ? (
          <text x={right} y={height - 3} textAnchor="end" className="lab-chart-label lab-quality-last">
            {windowLabel(last.start, info?.window_s)}
          </text>
        ) : null}
        {versions.map((version, i) => {
          const series = points.filter(p => p.version === version).sort((a, b) => a.window - b.window);
          const degraded = Boolean(info?.tests?.[String(version)]?.degraded);
          const colour = degraded ? 'lab-quality-degraded' : `lab-quality-s${i % 4}`;
          return (
            <g key={version} className={`lab-quality-series ${colour}`} data-version={version} data-degraded={degraded ? 'true' : 'false'}>
              {series.length > 1 ? (
                <polyline points={series.map(p => `${x(p.window).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ')} className="lab-quality-line" />
              ) : null}
              {series.map(p => (
                <circle key={p.window} cx={x(p.window)} cy={y(p.value)} r={series.length > 40 ? 1.5 : 2.5} className="lab-quality-point" data-window={p.start}>
                  <title>{`v${version} ${windowLabel(p.start, info?.window_s)}: ${name} ${p.value.toPrecision(4)}${p.labelled !== null ? ` (${p.labelled} labelled)` : ''}`}</title>
                </circle>
              ))}
            </g>
          );
        })}
      </svg>
    </div>
  );
}

/**
 * Live quality per window of request time, per model version: one small plot per metric
 * (the task's headline metric and the loss the degradation test watches); a version the
 * test found degraded in the error colour.
 */
export function QualityChart(props: { rows: unknown; info: unknown }): JSX.Element {
  const points = qualityPoints(props.rows);
  const info = props.info && typeof props.info === 'object' ? (props.info as QualityInfoLike) : null;
  const metrics = plottedMetrics(points, info);
  if (!metrics.length) {
    return (
      <div className="lab-empty lab-quality-empty">
        No live quality per window yet: it needs served predictions whose labels are due (`lab monitor run`
        records it).
      </div>
    );
  }
  const versions = [...new Set(points.filter(p => metrics.includes(p.metric)).map(p => p.version))].sort((a, b) => a - b);
  return (
    <div className="lab-quality lab-chart" data-source={info?.source ?? ''}>
      <div className="lab-subtitle">live quality</div>
      <div className="lab-chart-note">
        {windowName(info?.window_s)}
        {info?.as_of ? ` · labels known by ${windowLabel(info.as_of, 3600)}` : ''}
        {info?.run_id ? ` · run ${info.run_id.slice(0, 8)}` : info?.source === 'summary' ? ' · the summary’s last window' : ''}
      </div>
      {metrics.map(metric => (
        <QualityPlot key={metric} metric={metric} points={points.filter(p => p.metric === metric)} info={info} />
      ))}
      <div className="lab-legend">
        {versions.map((version, i) => {
          const test = info?.tests?.[String(version)];
          const degraded = Boolean(test?.degraded);
          return (
            <span key={version} className="lab-legend-item" data-version={version}>
              <span className={`lab-legend-swatch ${degraded ? 'lab-quality-degraded' : `lab-quality-s${i % 4}`}`} />v{version}
              {degraded ? ' degraded' : test?.status ? ` ${test.status}` : ''}
            </span>
          );
        })}
      </div>
    </div>
  );
}
