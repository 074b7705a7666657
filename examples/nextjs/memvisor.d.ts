// Types of memvisor.mjs, the client of the memvisor supervisor's HTTP API v1.

export type JobStatus = "queued" | "running" | "paused" | "completed" | "failed" | "cancelled";
export type MemoryLevel = "ok" | "warning" | "critical" | "kill";

/** A job spec: the schema of a YAML job file (see pkg/job). */
export interface JobSpec {
  id?: string;
  source: Record<string, unknown> & { type: "jsonl" | "synthetic" | "podio" };
  target: Record<string, unknown> & { type: "jsonl" | "podio" };
  match?: { source_field?: string; target_field?: string };
  mode?: "create" | "update" | "upsert";
  on_duplicate?: "skip" | "update" | "error";
  batch_size?: number;
  concurrency?: number;
  max_items?: number;
  dry_run?: boolean;
  field_mapping?: Record<string, string>;
  snapshot_interval?: string;
  memory?: Record<string, unknown>;
  log?: { mask_values?: boolean };
}

export interface Progress {
  total: number;
  total_known: boolean;
  processed: number;
  created: number;
  updated: number;
  skipped: number;
  failed: number;
  percent: number;
}

export interface Throughput {
  items_per_s: number;
  /** Seconds to completion, null when unknown. */
  eta: number | null;
  rate_limited_until?: string;
}

export interface Memory {
  rss: number;
  heap: number;
  budget: number;
  level: MemoryLevel;
  usage_ratio?: number;
  peak_rss?: number;
  warning?: number;
  critical?: number;
}

export interface Restarts {
  graceful: number;
  crash: number;
  hang: number;
  kill: number;
}

export interface Job {
  id: string;
  status: JobStatus;
  reason?: string;
  dry_run: boolean;
  retry_failed: boolean;
  source: { type: string; path?: string; app_id?: number; count?: number };
  target: { type: string; path?: string; app_id?: number };
  progress: Progress;
  throughput: Throughput;
  memory: Memory;
  restarts: Restarts;
  gc_requests: number;
  errors_by_category: Record<string, number>;
  checkpoint: { offset: number; batches: number };
  cache: { entries: number; bytes: number };
  runs: number;
  last_error?: string;
  timestamps: { created: string; updated: string; started: string | null; finished: string | null };
}

export interface JobList {
  jobs: Job[];
  next_cursor: string | null;
}

export interface Transition {
  id: string;
  status: JobStatus;
  job: Job;
}

export interface FailedItem {
  time?: string;
  source_id?: number;
  line?: number;
  category?: string;
  retryable?: boolean;
  error?: string;
  detail?: unknown;
  invalid_line?: string;
}

export interface FailedPage {
  items: FailedItem[];
  next_cursor: string | null;
  end_offset: number;
}

export type EventKind = "snapshot" | "progress" | "memory" | "level" | "gc" | "restart" | "status" | "done";

export interface JobEvent {
  time: string;
  job: string;
  progress?: Progress;
  throughput?: Throughput;
  memory?: Memory;
  level?: MemoryLevel;
  restart_kind?: "graceful" | "crash" | "hang" | "kill";
  reason?: string;
  /** The whole job, on snapshot, status and done. */
  view?: Job;
  history?: { t: number; rss: number; heap: number; budget: number }[];
  markers?: { t: number; kind: string; label?: string; reason?: string }[];
  errors_by_category?: Record<string, number>;
}

export declare class MemvisorError extends Error {
  readonly status: number;
  readonly code: string;
  readonly fields: { field: string; message: string }[];
}

export interface Options {
  signal?: AbortSignal;
}

export interface ClientOptions {
  /** The supervisor (server side) or the proxy route (browser); default same origin. */
  baseUrl?: string;
  /** The bearer token; server side only. */
  token?: string;
  fetch?: typeof fetch;
  /** An EventSource implementation; null forces the fetch-based stream. */
  EventSource?: unknown;
}

export interface Client {
  createJob(spec: JobSpec | string, opts?: Options): Promise<{ id: string; status: JobStatus }>;
  getJob(id: string, opts?: Options): Promise<Job>;
  listJobs(opts?: Options & { status?: JobStatus | JobStatus[]; cursor?: string; limit?: number }): Promise<JobList>;
  pause(id: string, opts?: Options): Promise<Transition>;
  resume(id: string, opts?: Options): Promise<Transition>;
  cancel(id: string, opts?: Options): Promise<Transition>;
  retryFailed(id: string, opts?: Options): Promise<Transition>;
  deleteJob(id: string, opts?: Options): Promise<null>;
  failedItems(id: string, opts?: Options & { cursor?: string; limit?: number }): Promise<FailedPage>;
  dryRun(id: string, opts?: Options): Promise<unknown>;
  subscribe(
    id: string,
    onEvent: (kind: EventKind, data: JobEvent) => void,
    opts?: { onError?: (err: unknown) => void; reconnect?: boolean },
  ): () => void;
}

export declare function createClient(opts?: ClientOptions): Client;
export declare function isFinished(status: JobStatus): boolean;
export declare function readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<[EventKind, JobEvent]>;
