// The JetStream half of the edge host: moves bytes between nats-server and the
// Python guest, decides nothing.
//
// The guest's JsBackbone (adapters/edge/_jsbackbone.py) implements Thaw's Backbone
// contract on top of this object, so the unchanged host (open_host, StreamWorker,
// decide_stream, KvIdempotencyStore) runs inside Pyodide; every decision (ack, nak
// with a delay, dead-letter and term) is made there, exactly as in the Python host.
//
// Every method answers a plain object: `{ error: "", ... }` or `{ error: CODE,
// message }` (CODE as in ERROR_CODES), so the guest raises the matching Thaw error
// without parsing JavaScript exceptions. No nulls: Pyodide hands JavaScript's null
// to Python as `jsnull`, not None.
//
// Pulls are hand-rolled on the core client, as in adapters/nats/_pull.py: one inbox
// per pull request, `no_wait` with `expires` (the server delivers what it holds, or
// waits up to `expires` for the first message), follow-up pulls while the consumer
// still holds messages. The jetstream package's `consumer.fetch` waits until the
// batch is full (a fetch sized to the free slots would then stall up to `expires`
// on a quiet stream) and accepts no expiry under one second.

import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

// The packages live in the edge cache's node_modules (`npm ci` from the committed
// package-lock.json), not beside this file: loaded from there by openNatsBridge.
let connect, createInbox, natsHeaders, jetstream, jetstreamManager, JetStreamApiError, Kvm;
let credsAuthenticator, nkeyAuthenticator;
let inboxPrefix = "_INBOX"; // THAW_NATS_INBOX_PREFIX: every inbox of the bridge uses it
const newInbox = () => createInbox(inboxPrefix);

function loadPackages(cache) {
  if (Kvm) return;
  const require = createRequire(path.join(cache, "node_modules", "thaw-edge.cjs"));
  ({ connect, createInbox, headers: natsHeaders, credsAuthenticator, nkeyAuthenticator } = require("@nats-io/transport-node"));
  ({ jetstream, jetstreamManager, JetStreamApiError } = require("@nats-io/jetstream"));
  ({ Kvm } = require("@nats-io/kv"));
}

const API = "$JS.API";
const MIN_EXPIRES = 0.02; // seconds: a no_wait pull still needs an expiry (see _pull.py)
const MARGIN = 2.0; // seconds past `expires` before a pull is given up locally
const TOP_UPS = 3;
const CONFIRM_TIMEOUT = 5_000; // ms for nak/term confirmations and API requests
const encoder = new TextEncoder();

const ERROR_CODES = {
  10014: "consumer_not_found",
  10059: "stream_not_found",
  10037: "message_not_found",
  10071: "wrong_last_sequence",
  10164: "wrong_last_sequence",
};

function fail(error, fallback = "backbone_error") {
  const code = error instanceof JetStreamApiError ? ERROR_CODES[error.code] : undefined;
  const message = String(error?.message || error);
  if (!code && /no responders/i.test(message)) return { error: "no_responders", message };
  if (!code && /stream not found/i.test(message)) return { error: "stream_not_found", message };
  if (!code && /consumer not found/i.test(message)) return { error: "consumer_not_found", message };
  return { error: code || fallback, message };
}

async function answer(work) {
  try {
    return { error: "", ...(await work()) };
  } catch (error) {
    return fail(error);
  }
}

/** Headers as JSON text (first value of each name), the shape the guest decodes. */
function headersJson(h) {
  if (!h) return "{}";
  const fields = {};
  for (const name of h.keys()) fields[name] = h.get(name);
  return JSON.stringify(fields);
}

/** The guest's JSON headers as the client's headers, or undefined when there are none. */
function natsHeadersFrom(text) {
  const fields = Object.entries(JSON.parse(text));
  if (!fields.length) return undefined;
  const h = natsHeaders();
  for (const [name, value] of fields) h.set(name, value);
  return h;
}

/** A plain Uint8Array view (Pyodide refuses a Node Buffer, which the client hands out). */
function plainBytes(data) {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function pendingAfter(reply) {
  const tokens = reply.split(".");
  return Number(tokens.length === 9 ? tokens[8] : tokens[10]);
}

// -- connecting: the same settings as the Python hosts (adapters/cli/nats_options.py) -------

/**
 * `url` without its user info, and the credentials it carried: `nats://user:pass@h:4222`
 * gives a user and a password, `nats://token@h:4222` a token (as every NATS client reads
 * them). Several comma-separated URLs must agree.
 */
export function stripCredentials(url) {
  const servers = [];
  const found = new Set();
  let user, pass, tls = false;
  for (const part of url.split(",").map((u) => u.trim()).filter(Boolean)) {
    const parsed = new URL(part.includes("://") ? part : `nats://${part}`);
    tls ||= parsed.protocol === "tls:";
    if (parsed.username || parsed.password) {
      user = decodeURIComponent(parsed.username);
      pass = parsed.password ? decodeURIComponent(parsed.password) : undefined;
      found.add(`${user}\u0000${pass}`);
    }
    servers.push(`${parsed.hostname}${parsed.port ? `:${parsed.port}` : ""}`);
  }
  if (!servers.length) throw new Error("the NATS URL is empty");
  if (found.size > 1) throw new Error("the NATS URLs carry different credentials; give them once");
  return { servers, user, pass, tls };
}

/** A NATS URL fit to print: user info replaced by `***`. */
export function redact(url) {
  return String(url).replace(/([a-z][a-z0-9+.-]*:\/\/)[^@/,\s]*@/gi, "$1***@");
}

/** `text` with every secret in `secrets` replaced by `***` (error messages echo input). */
function scrub(text, secrets) {
  let clean = redact(text);
  for (const secret of secrets) if (secret) clean = clean.split(secret).join("***");
  return clean;
}

/**
 * The npm client's connect options for `url` and the THAW_NATS_* variables of `env`
 * (user and password, token, nkey seed file, .creds file, TLS CA, client certificate
 * and key, server name, inbox prefix), and the secrets to keep out of messages.
 */
export function connectOptions(url, env, readFile) {
  const { servers, user: urlUser, pass: urlPass, tls: tlsScheme } = stripCredentials(url);
  const options = { servers };
  const secrets = [];
  const fromFile = (name) => {
    const file = env[`${name}_FILE`];
    return file ? readFile(file).toString("utf8").replace(/[\r\n]+$/, "") : undefined;
  };
  let user = env.THAW_NATS_USER, pass = env.THAW_NATS_PASSWORD || fromFile("THAW_NATS_PASSWORD");
  let token = env.THAW_NATS_TOKEN || fromFile("THAW_NATS_TOKEN");
  if (urlPass !== undefined) {
    if ((pass && pass !== urlPass) || (user && user !== urlUser)) {
      throw new Error("the NATS user or password is given twice, in the URL and the environment");
    }
    user = urlUser;
    pass = urlPass;
  } else if (urlUser !== undefined) {
    if (token && token !== urlUser) throw new Error("the NATS token is given twice, in the URL and the environment");
    token = urlUser;
  }
  if (user !== undefined && pass !== undefined) Object.assign(options, { user, pass });
  if (token) options.token = token;
  secrets.push(pass, token);
  if (env.THAW_NATS_NKEY_SEED_FILE) {
    const seed = new Uint8Array(readFile(env.THAW_NATS_NKEY_SEED_FILE));
    options.authenticator = nkeyAuthenticator(new TextEncoder().encode(new TextDecoder().decode(seed).trim()));
  }
  if (env.THAW_NATS_CREDS) options.authenticator = credsAuthenticator(new Uint8Array(readFile(env.THAW_NATS_CREDS)));
  const tls = {};
  if (env.THAW_NATS_TLS_CA) tls.caFile = env.THAW_NATS_TLS_CA;
  if (env.THAW_NATS_TLS_CERT) tls.certFile = env.THAW_NATS_TLS_CERT;
  if (env.THAW_NATS_TLS_KEY) tls.keyFile = env.THAW_NATS_TLS_KEY;
  if (env.THAW_NATS_TLS_SERVER_NAME) tls.servername = env.THAW_NATS_TLS_SERVER_NAME;
  if (tlsScheme || Object.keys(tls).length) options.tls = tls;
  if (env.THAW_NATS_INBOX_PREFIX) options.inboxPrefix = env.THAW_NATS_INBOX_PREFIX;
  return { options, secrets: secrets.filter(Boolean) };
}

export class NatsBridge {
  constructor(connection) {
    this.connection = connection;
    this.js = jetstream(connection);
    this.kvm = new Kvm(this.js);
    this._jsm = null;
    this._buckets = new Map();
  }

  /**
   * Connect to `url` with the npm client from the edge cache `cache`, authenticating with
   * the URL's credentials or the THAW_NATS_* variables of `env`. An error names the
   * server without credentials and never holds a secret.
   */
  static async open(url, { cache, name = "thaw-edge", env = process.env }) {
    loadPackages(cache);
    let options, secrets = [];
    try {
      ({ options, secrets } = connectOptions(url, env, (file) => fs.readFileSync(file)));
      inboxPrefix = options.inboxPrefix || "_INBOX";
      // Bounded first connection (a wrong password fails, never retries for ever); once
      // connected the client reconnects for good, as the Python hosts do.
      const connection = await connect({ ...options, name, maxReconnectAttempts: -1, waitOnFirstConnect: false, timeout: 5_000 });
      return new NatsBridge(connection);
    } catch (error) {
      const wrapped = new Error(scrub(String(error?.message || error), secrets));
      wrapped.code = error?.code;
      throw wrapped;
    }
  }

  async jsm() {
    this._jsm ??= await jetstreamManager(this.connection, { timeout: CONFIRM_TIMEOUT });
    return this._jsm;
  }

  // -- streams and consumers ---------------------------------------------------------

  /** One pull request: up to `batch` messages, waiting at most `timeout` s for the first. */
  _pull(stream, durable, batch, timeout) {
    const expires = Math.max(timeout, MIN_EXPIRES);
    const messages = [];
    return new Promise((resolve) => {
      let timer = null;
      const subscription = this.connection.subscribe(newInbox(), {
        callback: (error, message) => {
          if (error) return finish("error", String(error.message || error));
          const code = message.headers?.code || 0;
          if (code === 100) return; // idle heartbeat
          if (code || (message.data.length === 0 && message.headers?.hasError)) {
            return finish(String(code), message.headers.description);
          }
          messages.push({
            subject: message.subject,
            reply: message.reply,
            data: plainBytes(message.data),
            headers: headersJson(message.headers),
          });
          if (messages.length >= batch) finish("full", "");
        },
      });
      const finish = (status, description) => {
        clearTimeout(timer);
        subscription.unsubscribe();
        resolve({ messages, status, description });
      };
      timer = setTimeout(() => finish("local-timeout", ""), (expires + MARGIN) * 1000);
      const body = JSON.stringify({ batch, expires: Math.round(expires * 1e9), no_wait: true });
      this.connection.publish(`${API}.CONSUMER.MSG.NEXT.${stream}.${durable}`, encoder.encode(body), { reply: subscription.getSubject() });
    });
  }

  fetch(stream, durable, batch, timeout) {
    return answer(async () => {
      let pulled = await this._pull(stream, durable, batch, timeout);
      const received = pulled.messages;
      for (let i = 0; i < TOP_UPS; i++) {
        if (!["404", "408"].includes(pulled.status) || !pulled.messages.length) break;
        if (received.length >= batch || pendingAfter(received[received.length - 1].reply) === 0) break;
        pulled = await this._pull(stream, durable, batch - received.length, 0);
        received.push(...pulled.messages);
      }
      if (pulled.status === "503" && !received.length) {
        throw new Error(`no responders: JetStream is not available for ${stream}/${durable}`);
      }
      return { messages: received };
    });
  }

  // ack and in-progress are fire-and-forget, nak and term wait for the server's
  // confirmation, as JetStreamMessage does in adapters/nats/_pull.py.
  ack(reply) {
    return answer(async () => { this.connection.publish(reply, "+ACK"); return {}; });
  }

  working(reply) {
    return answer(async () => { this.connection.publish(reply, "+WPI"); return {}; });
  }

  nak(reply, delay) {
    const payload = delay > 0 ? `-NAK ${JSON.stringify({ delay: Math.round(delay * 1e9) })}` : "-NAK";
    return answer(async () => { await this.connection.request(reply, payload, { timeout: CONFIRM_TIMEOUT }); return {}; });
  }

  term(reply, reason) {
    return answer(async () => {
      await this.connection.request(reply, reason ? `+TERM ${reason}` : "+TERM", { timeout: CONFIRM_TIMEOUT });
      return {};
    });
  }

  publish(subject, data, headersText, msgId) {
    return answer(async () => {
      const options = { timeout: CONFIRM_TIMEOUT };
      const headers = natsHeadersFrom(headersText);
      if (headers) options.headers = headers;
      if (msgId) options.msgID = msgId;
      const ack = await this.js.publish(subject, data, options);
      return { stream: ack.stream, seq: ack.seq, duplicate: Boolean(ack.duplicate) };
    });
  }

  /** Core request/reply (`ctx.request`): the first reply, or `timeout` / `no_responders`. */
  request(subject, data, headersText, timeoutMs) {
    return answer(async () => {
      const options = { timeout: Math.max(1, Math.round(timeoutMs)) };
      const headers = natsHeadersFrom(headersText);
      if (headers) options.headers = headers;
      let reply;
      try {
        reply = await this.connection.request(subject, data, options);
      } catch (error) {
        const message = String(error?.message || error);
        if (error?.name === "TimeoutError" || /timeout/i.test(message)) return { error: "timeout", message };
        throw error;
      }
      return { data: plainBytes(reply.data), headers: headersJson(reply.headers) };
    });
  }

  consumerInfo(stream, durable) {
    return answer(async () => {
      const info = await (await this.jsm()).consumers.info(stream, durable);
      const config = info.config;
      return {
        info: JSON.stringify({
          stream,
          config: {
            durable: config.durable_name,
            filter_subject: config.filter_subject || "",
            ack_wait: (config.ack_wait || 0) / 1e9,
            max_deliver: config.max_deliver ?? -1,
            backoff: (config.backoff || []).map((nanos) => nanos / 1e9),
            max_ack_pending: config.max_ack_pending ?? 1000,
          },
          num_pending: info.num_pending,
          num_ack_pending: info.num_ack_pending,
          num_redelivered: info.num_redelivered,
        }),
      };
    });
  }

  // -- KV ------------------------------------------------------------------------------

  async _bucket(name) {
    let bucket = this._buckets.get(name);
    if (!bucket) {
      bucket = await this.kvm.open(name);
      await bucket.status(); // open() binds lazily: make a missing bucket fail here
      this._buckets.set(name, bucket);
    }
    return bucket;
  }

  kvOpen(name) {
    return answer(async () => { await this._bucket(name); return {}; });
  }

  kvCreateBucket(name, ttl, maxValueSize) {
    return answer(async () => {
      const options = { history: 1 };
      if (ttl > 0) options.ttl = Math.round(ttl * 1000);
      if (maxValueSize > 0) options.maxValueSize = maxValueSize;
      this._buckets.set(name, await this.kvm.create(name, options));
      return {};
    });
  }

  /** The key's latest record, tombstones included (the guest reads those as absent). */
  kvGet(name, key) {
    return answer(async () => {
      const entry = await (await this._bucket(name)).get(key);
      if (!entry) return { found: false };
      return { found: true, value: plainBytes(entry.value), revision: entry.revision, operation: entry.operation };
    });
  }

  kvPut(name, key, value) {
    return answer(async () => ({ revision: await (await this._bucket(name)).put(key, value) }));
  }

  kvCreate(name, key, value) {
    return answer(async () => ({ revision: await (await this._bucket(name)).create(key, value) }));
  }

  kvUpdate(name, key, value, last) {
    return answer(async () => ({ revision: await (await this._bucket(name)).update(key, value, last) }));
  }

  kvDelete(name, key, last) {
    return answer(async () => {
      await (await this._bucket(name)).delete(key, last > 0 ? { previousSeq: last } : undefined);
      return {};
    });
  }

  kvKeys(name) {
    return answer(async () => {
      const keys = [];
      for await (const key of await (await this._bucket(name)).keys()) keys.push(key);
      return { keys: JSON.stringify(keys.sort()) };
    });
  }

  async close() {
    await this.connection.drain();
  }
}
