// Type definitions for @sse-gateway/client 0.1.0 (hand-written).
// SPDX-License-Identifier: Apache-2.0

/** Connection state shared by every tab of a client. */
export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed" | "error";

/** How the tabs of an origin share one stream. */
export type SharedMode = "auto" | "worker" | "broadcast" | "none";

/** Why the gateway says events may have been missed (`gateway.reset`). */
export type ResetReason = "history_expired" | "unknown_id" | "malformed_id" | "upstream_gap" | (string & {});

/** Why the gateway ended the stream for good (`gateway.close` with `revoked`). */
export type CloseReason = "revoked" | (string & {});

/** An event delivered to a subscription. */
export interface GatewayEvent {
  /** The event id (`id:`), or null when the frame had none. */
  id: string | null;
  /** The SSE event type; `"message"` when the frame had no `event:` line. */
  event: string;
  /** The data lines joined with "\n". */
  data: string;
  /** The concrete topic from the `: topic` comment, or null. */
  topic: string | null;
}

/** Callbacks of a subscription besides its event callback. */
export interface SubscriptionHandlers {
  /** Events may have been missed (every subscription gets it). */
  onReset?(reason: ResetReason): void;
  /** The stream was revoked by an operator; nothing more arrives until `client.reconnect()`. */
  onClose?(reason: CloseReason): void;
  /** A credentials problem, or this subscription's topic was refused. */
  onError?(error: GatewayError): void;
}

export interface Subscription {
  readonly id: string;
  readonly topic: string;
  /** Ends this subscription (idempotent). */
  unsubscribe(): void;
}

export interface ConnectOptions {
  /** The gateway's origin, e.g. "https://events.example.com". Default: this page's origin. */
  base?: string;
  /** Returns a JWT (or null for public topics); called before every (re)connect and topic change. */
  getToken?: () => Promise<string | null> | string | null;
  /** Default "auto": SharedWorker, else BroadcastChannel leader, else one stream per tab. */
  shared?: SharedMode;
  /** URL of this module for `new SharedWorker(...)` (default: `import.meta.url`); set it when bundling. */
  workerUrl?: string | URL;
  /** A fetch implementation (tests, instrumentation). Default: the global fetch. */
  fetch?: typeof fetch;
}

export interface Client {
  /** Subscribes to a topic or a wildcard pattern (`*` one token, `>` last token, one or more). Throws TypeError for an invalid topic. */
  subscribe(topic: string, onEvent: (event: GatewayEvent) => void, handlers?: SubscriptionHandlers): Subscription;
  /** The shared connection's state as this tab sees it. */
  readonly state: ClientState;
  /** Called on every state change. */
  onStateChange: ((state: ClientState) => void) | null;
  /** Forgets credential and topic errors and reconnects now (also after `revoked`). */
  reconnect(): void;
  /** This tab leaves: its subscriptions end; its timers and fetches are cancelled. */
  close(): void;
  /** The sharing mode actually in use. */
  readonly mode: "worker" | "broadcast" | "none";
  /** Broadcast mode: whether this tab holds the stream. */
  readonly isLeader: boolean;
  /** The id of the last event received (also stored in sessionStorage). */
  readonly lastId: string | null;
  /** The normalised base URL. */
  readonly base: string;
}

/** Creates a client for one gateway origin. */
export function connect(options?: ConnectOptions): Client;

/** Error passed to `onError`. */
export class GatewayError extends Error {
  constructor(message: string, info?: { status?: number; code?: string; topic?: string | null });
  readonly name: "GatewayError";
  /** HTTP status (0 when not from a response). */
  status: number;
  /** The gateway's error code (`unauthorized`, `forbidden`, `bad_topic`, …) or "". */
  code: string;
  /** The topic refused, or null for errors about the whole stream. */
  topic: string | null;
  toJSON(): { message: string; status: number; code: string; topic: string | null };
}

/** Items returned by `SseParser.feed`. */
export type SseItem =
  | { type: "event"; id: string | null; event: string; data: string; topic: string | null }
  | { type: "id"; id: string }
  | { type: "retry"; ms: number }
  | { type: "comment"; text: string };

/** Incremental text/event-stream parser (WHATWG rules, plus comments and `: topic`). */
export class SseParser {
  constructor();
  /** The last event ID buffer (persists across events). */
  lastEventId: string;
  /** Feeds decoded text (any chunking); returns the items it completed. */
  feed(text: string): SseItem[];
}

/** Does a topic pattern (with `*` / `>` wildcards) match a concrete topic? */
export function matches(pattern: string, topic: string): boolean;

/** Is this a topic the gateway accepts (syntax only)? */
export function isValidTopic(topic: string): boolean;

export interface BackoffOptions {
  /** Start when `retry` is not given (1000 ms). */
  base?: number;
  /** Cap (30000 ms). */
  max?: number;
  /** The server's `retry:` value in ms. */
  retry?: number;
  /** A [0, 1) random source (Math.random). */
  random?: () => number;
}

/** Reconnection delay in ms for the given number of consecutive failures, jittered in [50 %, 100 %]. */
export function backoff(attempt: number, options?: BackoffOptions): number;

/** The routing table: subscriptions by id with their pattern and owner. */
export class Router<Owner = unknown> {
  constructor();
  readonly size: number;
  add(subId: string, pattern: string, owner: Owner): void;
  remove(subId: string): { pattern: string; owner: Owner } | null;
  removeOwner(owner: Owner): string[];
  /** The distinct patterns wanted. */
  topics(): Set<string>;
  /** Owners and subscription ids an event goes to (`active`: only these patterns). */
  route(event: { topic?: string | null }, active?: Set<string>): Array<{ owner: Owner; subIds: string[] }>;
  /** Subscriptions with exactly this pattern, or all with null. */
  byPattern(pattern: string | null): Array<{ owner: Owner; subIds: string[] }>;
}

/** Serves tabs from a SharedWorker scope (automatic when this module is the worker script). */
export function serveWorker(
  scope: { onconnect: ((event: MessageEvent) => void) | null; location?: { origin: string } },
  options?: { fetch?: typeof fetch },
): unknown;
