/**
 * The lab server extension's REST API (`<base_url>/lab/api/...`), typed as the
 * shared contract gives it. Every call goes through jupyter-server's authenticated
 * connection (token and XSRF handled by `ServerConnection`). A failed call throws an
 * `ApiError` whose message is the server's `{"error": ...}` sentence, which names the fix.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface Summary {
  lab: string;
  model: string | null;
  plugins: string[];
}

export interface StageRecord {
  name: string;
  status: string;
  cached: boolean;
  seconds: number | null;
  attempt: number | null;
  notebook: string | null;
  error: string | null;
}

export interface Run {
  id: string;
  kind: string;
  status: string;
  started_at: string | null;
  ended_at: string | null;
  seconds: number | null;
  stages: StageRecord[];
}

export interface ModelVersionInfo {
  version: number;
  created_at: string | null;
  flavor: string | null;
  metrics: Record<string, number | null>;
  aliases: string[];
  lineage: Record<string, unknown>;
}

export interface Model {
  name: string;
  aliases: Record<string, number>;
  versions: ModelVersionInfo[];
}

export interface Variant {
  name: string;
  weight: number;
  holdout?: boolean;
}

export interface Experiment {
  name: string;
  status: string;
  kind: string;
  unit: string | null;
  variants: Variant[];
  stats: Record<string, unknown> | null;
  guardrails: unknown[];
}

export interface MonitorCheck {
  name?: string;
  status: string;
  detail: string;
  data?: Record<string, unknown>;
}

export interface Monitoring {
  monitor: {
    model?: string;
    version?: number | null;
    start?: string;
    end?: string;
    status?: string;
    breaches?: string[];
    checks?: Record<string, MonitorCheck> | MonitorCheck[];
  } | null;
  /** Why data/monitor.json could not be read (then `monitor` is null). */
  monitor_error?: string | null;
  drift: unknown;
  reports: { name: string; url: string }[];
  /** The freshness check's feature views (absent from an older server). */
  freshness?: FreshnessRow[];
  /** Live quality per version, window and metric (absent from an older server). */
  quality?: QualityRow[];
  quality_info?: QualityInfo | null;
}

/** One feature view of the monitor's freshness check; times in seconds. */
export interface FreshnessRow {
  view: string;
  /** Median age of the values served in the window, or the view's lag with no request. */
  age_s: number | null;
  age_kind: 'served p50' | 'lag' | null;
  age_max_s: number | null;
  /** The view's freshness objective; null when it declares none. */
  limit_s: number | null;
  breach_rate: number | null;
  max_breach_rate: number | null;
  requests: number;
  breached: boolean;
  materialized: boolean;
}

/** One window's value of one live-quality metric of one model version. */
export interface QualityRow {
  version: number;
  /** The window's number since 1970-01-01 (the registry's step). */
  window: number;
  window_start: string;
  window_end: string | null;
  metric: string;
  value: number;
  n_labelled: number | null;
}

/** Where the quality rows come from, and what to plot first. */
export interface QualityInfo {
  source: 'run' | 'summary';
  run_id: string | null;
  as_of: string | null;
  window_s: number | null;
  model: string | null;
  metrics: string[];
  tests: Record<string, { loss: string | null; metric: string | null; status: string | null; degraded: boolean }>;
}

export interface ProgressStage {
  name: string;
  status: string;
  done: number | null;
  total: number | null;
  unit: string | null;
  what: string | null;
  seconds: number | null;
}

export interface Progress {
  run_id: string | null;
  stages: ProgressStage[];
  job?: Record<string, unknown> | null;
}

export interface StageJob {
  job: string;
  stage: string;
}

/** An API call that failed: `status` is the HTTP status (0 when the server was not reached). */
export class ApiError extends Error {
  constructor(message: string, readonly status: number, readonly body: unknown = null) {
    super(message);
  }
}

/** The full URL of a route under `lab/api/`, joined to the server's base URL. */
export function apiUrl(path: string): string {
  const settings = ServerConnection.makeSettings();
  return URLExt.join(settings.baseUrl, 'lab', 'api', path);
}

/** Call `lab/api/<path>` and return its JSON body; throws `ApiError` on any failure. */
export async function requestApi<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(apiUrl(path), init, settings);
  } catch (error) {
    throw new ApiError(`The Jupyter server could not be reached (${String(error)}); is it running?`, 0);
  }
  const text = await response.text();
  let body: unknown = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  if (!response.ok) {
    const error = body && typeof body === 'object' && 'error' in body ? String((body as { error: unknown }).error) : '';
    const hint =
      response.status === 404 && !error
        ? 'the lab server extension is not answering; is plugins.jupyterlab_ext enabled (jupyter server extension list)?'
        : error || response.statusText || 'request failed';
    throw new ApiError(`${init.method ?? 'GET'} lab/api/${path}: ${hint}`, response.status, body);
  }
  return body as T;
}

/** POST a JSON body to `lab/api/<path>`. */
export function postApi<T>(path: string, payload: unknown): Promise<T> {
  return requestApi<T>(path, { method: 'POST', body: JSON.stringify(payload) });
}
