#!/usr/bin/env node
// Thaw's edge host: Pyodide under Node, an App's http capabilities behind a
// fetch-style handler, MemoryBackbone by default.
//
//   node thaw_edge.mjs serve APP_DIR [--port N] [--host 127.0.0.1] [--nats URL]
//   node thaw_edge.mjs handle APP_DIR < requests.json   (JSON list in, JSON list out)
//   node thaw_edge.mjs test [--snapshot FILE] [-- PYTEST_ARGS...]
//   node thaw_edge.mjs bench APP_DIR --capability NAME [--data JSON] [--trials N]
//   node thaw_edge.mjs snapshot APP_DIR --output FILE.snap   (built inside Pyodide)
//   node thaw_edge.mjs memory-snapshot APP_DIR --output FILE  (Pyodide's memory, stdlib preloaded)
//
// serve, handle and bench take --memory-snapshot FILE to boot from one.
//
// `serve --nats URL` puts the app on JetStream instead of the in-memory backbone:
// nats_bridge.mjs (the @nats-io npm client) moves bytes, and the unchanged Python
// host inside Pyodide consumes the app's stream triggers from their durable
// consumers and acks, naks or dead-letters each message by its Outcome, with
// idempotency records in the app's KV bucket (shared with Python hosts). The
// streams, consumers and buckets must exist: `thaw provision APP --nats URL`.
//
// APP may be a snapshot (*.snap). Inside a bundle (`thaw edge build`), `serve`
// without APP serves the bundled app.
//
// As a module: `const edge = await openEdge("examples/hello"); await edge.handle(request)`.
//
// Everything comes from the edge cache (.thaw/edge, or THAW_EDGE_CACHE) that
// `python -m thaw.adapters.edge.prepare` fills: Pyodide from node_modules, wheels
// unpacked with unpackArchive. Nothing is fetched at run time.

import { spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { NatsBridge, redact } from "./nats_bridge.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
// A bundle made by `thaw edge build` holds this file beside thaw-bundle.json, its own
// Pyodide files and wheels (the cache layout) and Thaw's sources under thaw/.
const BUNDLE_MANIFEST = path.join(HERE, "thaw-bundle.json");
export const BUNDLE = fs.existsSync(BUNDLE_MANIFEST) ? JSON.parse(fs.readFileSync(BUNDLE_MANIFEST, "utf8")) : null;
export const ROOT = BUNDLE ? path.join(HERE, "thaw") : path.resolve(HERE, "..", "..", "..");
export const CACHE = process.env.THAW_EDGE_CACHE || (BUNDLE ? HERE : path.join(ROOT, ".thaw", "edge"));
const PREPARE_HINT = BUNDLE
  ? "this bundle is incomplete: build it again with `thaw edge build`"
  : "run `.venv/bin/python -m thaw.adapters.edge.prepare` (make test runs it)";
const GUEST = "/thaw"; // on sys.path inside Pyodide: the package thaw (runtime/, adapters/ as thaw/adapters/)
const APPS = "/apps"; // the app's source tree inside Pyodide
// thaw.adapters.http's modules, but a package __init__ of our own: the edge imports only
// the transport-free ones (service, routing, ...) and never the httptools server, so
// it answers with the same routing, contracts and problem details as the native one.
const httpModules = (folder) => fs.readdirSync(folder).filter((f) => f.endsWith(".py") && f !== "__init__.py").sort();
const EDGE_MODULES = ["__init__.py", "_guest.py", "_bench.py", "_jsbackbone.py", "_pyodide_pytest.py", "_webloop.py"];
const SKIP = new Set(["__pycache__", "node_modules", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".hypothesis", ".ruff_cache"]);
const MAX_BODY = 8 * 1024 * 1024; // hard transport cap; routes have their own, smaller ones
const NO_BODY = new Set([204, 304]);

export class EdgeSetupError extends Error {}
const LOAD_ERRORS = new Set(["SnapshotError", "RevisionLoadError", "AppLoadError"]);
// Why an app on JetStream could not start (not provisioned, no server): a message, not a stack.
const START_ERRORS = new Set(["StreamNotFound", "ConsumerNotFound", "BucketNotFound", "BackboneError", "NoStreamForSubject"]);

function setupError(error) {
  const lines = String(error.message).trim().split("\n");
  return new EdgeSetupError(lines[lines.length - 1].replace(/^[\w.]+: /, ""));
}

function requireCache(cache, { tests = false, nats = false } = {}) {
  const pyodide = path.join(cache, "node_modules", "pyodide", "pyodide.mjs");
  if (!fs.existsSync(pyodide)) {
    throw new EdgeSetupError(`Pyodide is not installed under ${cache}: ${PREPARE_HINT}`);
  }
  if (nats && !fs.existsSync(path.join(cache, "node_modules", "@nats-io", "transport-node"))) {
    throw new EdgeSetupError(`the NATS client (@nats-io/transport-node) is not installed under ${cache}: ${PREPARE_HINT}`);
  }
  for (const group of tests ? ["runtime", "test"] : ["runtime"]) {
    const folder = path.join(cache, "wheels", group);
    if (!fs.existsSync(folder) || !fs.readdirSync(folder).some((f) => f.endsWith(".whl"))) {
      throw new EdgeSetupError(`the ${group} wheels for Pyodide are missing in ${folder}: ${PREPARE_HINT}`);
    }
  }
  return pyodide;
}

function copyTree(FS, from, to) {
  let bytes = 0;
  FS.mkdirTree(to);
  for (const entry of fs.readdirSync(from, { withFileTypes: true })) {
    if (SKIP.has(entry.name) || entry.name.startsWith(".")) continue;
    const source = path.join(from, entry.name);
    const target = `${to}/${entry.name}`;
    if (entry.isDirectory()) bytes += copyTree(FS, source, target);
    else if (entry.isFile() && !entry.name.endsWith(".pyc")) bytes += copyFile(FS, source, target);
  }
  return bytes;
}

function copyFile(FS, source, target) {
  const data = fs.readFileSync(source);
  FS.mkdirTree(path.posix.dirname(target));
  FS.writeFile(target, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return data.byteLength;
}

/** Thaw's core and the edge guest into Pyodide's file system under GUEST; bytes copied. */
function installSources(FS) {
  let bytes = copyTree(FS, path.join(ROOT, "runtime"), `${GUEST}/thaw`);
  bytes += copyFile(FS, path.join(ROOT, "adapters", "__init__.py"), `${GUEST}/thaw/adapters/__init__.py`);
  FS.mkdirTree(`${GUEST}/thaw/adapters/edge`);
  for (const name of EDGE_MODULES) {
    bytes += copyFile(FS, path.join(ROOT, "adapters", "edge", name), `${GUEST}/thaw/adapters/edge/${name}`);
  }
  FS.mkdirTree(`${GUEST}/thaw/adapters/http`);
  FS.writeFile(`${GUEST}/thaw/adapters/http/__init__.py`, '"""thaw.adapters.http for the edge: its transport-free modules only (no httptools)."""\n');
  for (const name of httpModules(path.join(ROOT, "adapters", "http"))) {
    bytes += copyFile(FS, path.join(ROOT, "adapters", "http", name), `${GUEST}/thaw/adapters/http/${name}`);
  }
  return bytes;
}

/**
 * Boot Pyodide from the cache with Thaw's core and the edge guest in its file system.
 * Returns { pyodide, timings, sizes }; `tests` adds pytest and hypothesis.
 */
export async function bootPyodide({ cache = CACHE, tests = false, output = "stderr", memorySnapshot = null } = {}) {
  const entry = requireCache(cache, { tests });
  const timings = {};
  const sizes = { wheels: 0, sources: 0 };
  let started = performance.now();
  const { loadPyodide } = await import(pathToFileURL(entry).href);
  const stream = output === "stdout" ? process.stdout : process.stderr;
  const write = { write: (buffer) => { stream.write(buffer); return buffer.length; } };
  const options = { indexURL: path.dirname(entry) + path.sep, env: { HOME: "/home/pyodide" } };
  // A memory snapshot restores the interpreter with the modules it held; the file
  // system is not part of it, so the files are written again below: the wheels' files
  // from the section after the memory image (no unzipping), Thaw's sources from disk.
  let keptWheels = null;
  let keptFiles = null;
  if (memorySnapshot) {
    const snapshot = readMemorySnapshot(memorySnapshot, entry);
    options._loadSnapshot = snapshot.bytes;
    sizes.memory_snapshot = snapshot.bytes.byteLength;
    keptWheels = snapshot.files ? snapshot.header.wheels : null;
    keptFiles = snapshot.files;
    if (keptWheels && (tests || keptWheels.join() !== wheelNames(cache, "runtime").join())) {
      throw new EdgeSetupError(`${memorySnapshot} was made with other wheels than those in ${path.join(cache, "wheels")}: make it again`);
    }
  }
  const pyodide = await loadPyodide(options);
  pyodide.setStdout(write);
  pyodide.setStderr({ write: (buffer) => { process.stderr.write(buffer); return buffer.length; } });
  timings.load_pyodide_ms = performance.now() - started;

  started = performance.now();
  if (keptWheels) writeFiles(pyodide.FS, keptFiles);
  else sizes.wheels += unpackWheels(pyodide, cache, tests ? ["runtime", "test"] : ["runtime"]);
  timings.unpack_wheels_ms = performance.now() - started;

  started = performance.now();
  sizes.sources += installSources(pyodide.FS);
  pyodide.runPython(`import sys; ${JSON.stringify(GUEST)} in sys.path or sys.path.insert(0, ${JSON.stringify(GUEST)})`);
  pyodide.runPython(writeKeptFiles("_thaw_edge_pycache")); // before the first import below
  pyodide.runPython("__import__(\"thaw.adapters.edge._webloop\", fromlist=[\"patch\"]).patch()");
  timings.copy_sources_ms = performance.now() - started;
  return { pyodide, timings, sizes };
}

/** Write files kept as [index length: u32 LE][index JSON: [[path, size]...]][data...]. */
function writeFiles(FS, blob) {
  const length = new DataView(blob.buffer, blob.byteOffset, 4).getUint32(0, true);
  const index = JSON.parse(new TextDecoder().decode(blob.subarray(4, 4 + length)));
  let offset = 4 + length;
  const folders = new Set();
  for (const [file, size] of index) {
    const folder = path.posix.dirname(file);
    if (!folders.has(folder)) { FS.mkdirTree(folder); folders.add(folder); }
    FS.writeFile(file, blob.subarray(offset, offset + size));
    offset += size;
  }
}

/** Every file under `root` in Pyodide's file system, packed for writeFiles. */
function packFiles(FS, root) {
  const index = [];
  const chunks = [];
  const walk = (folder) => {
    for (const name of FS.readdir(folder)) {
      if (name === "." || name === "..") continue;
      const file = `${folder}/${name}`;
      const mode = FS.stat(file).mode;
      if (FS.isDir(mode)) walk(file);
      else if (FS.isFile(mode)) {
        const data = FS.readFile(file);
        index.push([file, data.byteLength]);
        chunks.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      }
    }
  };
  walk(root);
  const head = Buffer.from(JSON.stringify(index), "utf8");
  const length = Buffer.alloc(4);
  length.writeUInt32LE(head.byteLength, 0);
  return Buffer.concat([length, head, ...chunks]);
}

function wheelNames(cache, group) {
  return fs.readdirSync(path.join(cache, "wheels", group)).filter((f) => f.endsWith(".whl")).sort();
}

/** Unpack the wheels of `groups` into site-packages; their total size. */
function unpackWheels(pyodide, cache, groups) {
  let bytes = 0;
  const site = pyodide.runPython("import sysconfig; sysconfig.get_path('purelib')");
  for (const group of groups) {
    for (const name of wheelNames(cache, group)) {
      const data = fs.readFileSync(path.join(cache, "wheels", group, name));
      bytes += data.byteLength;
      // unpackArchive wants a Uint8Array (a Node Buffer is refused), and extracts
      // into the current directory unless told where.
      pyodide.unpackArchive(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), "wheel", { extractDir: site });
    }
  }
  return bytes;
}

/** Python that writes the files a memory snapshot kept in module `name` (path -> bytes). */
function writeKeptFiles(name) {
  return `
import os, sys
for _path, _data in getattr(sys.modules.get(${JSON.stringify(name)}), "files", {}).items():
    os.makedirs(os.path.dirname(_path), exist_ok=True)
    with open(_path, "wb") as _handle:
        _handle.write(_data)
`;
}

const MEMORY_MAGIC = "thaw-edge-memory-snapshot/1\n";

/** Pyodide's version, from the lock file a bundle carries (its package.json is left out). */
function pyodideVersionAt(entry) {
  return JSON.parse(fs.readFileSync(path.join(path.dirname(entry), "pyodide-lock.json"), "utf8")).info.version;
}

/** The snapshot at `file`, for the Pyodide at `entry` (its pyodide.mjs). */
function readMemorySnapshot(file, entry) {
  const data = fs.readFileSync(file);
  const head = data.subarray(0, 4096).toString("latin1");
  const end = head.indexOf("\n", MEMORY_MAGIC.length);
  if (!head.startsWith(MEMORY_MAGIC) || end < 0) {
    throw new EdgeSetupError(`${file} is not a Thaw edge memory snapshot: make one with \`memory-snapshot\``);
  }
  const header = JSON.parse(head.slice(MEMORY_MAGIC.length, end));
  const pyodideVersion = pyodideVersionAt(entry);
  if (header.pyodide !== pyodideVersion) {
    throw new EdgeSetupError(`${file} was made by Pyodide ${header.pyodide}; this is Pyodide ${pyodideVersion}: make it again`);
  }
  const start = data.byteOffset + end + 1;
  const size = header.image ?? data.byteLength - end - 1;
  const bytes = new Uint8Array(data.buffer, start, size);
  const files = header.image ? new Uint8Array(data.buffer, start + size, data.byteLength - end - 1 - size) : null;
  // Pyodide views the image through Uint32Arrays: copy it if it does not start aligned.
  return { header, bytes: bytes.byteOffset % 8 ? bytes.slice() : bytes, files };
}

/**
 * Write a Pyodide memory snapshot for `appPath`: the stdlib modules it uses and the
 * pure-Python third-party ones (anyio, with its asyncio backend) already imported, the
 * wheels' files and the bytecode of Thaw and the app kept in memory. Compiled
 * extension modules (msgspec) and everything from Thaw or the app are left out: a
 * snapshot taken after msgspec's module was loaded crashes on restore ("table index
 * is out of bounds"), and Thaw's and the app's sources may change after it is made.
 */
export async function makeMemorySnapshot(appPath, output, { cache = CACHE } = {}) {
  const probe = await openEdge(appPath, { cache });
  const guest = probe.pyodide.pyimport("thaw.adapters.edge._guest");
  const modules = [...guest.preloadable_modules().toJs(), ...guest.preloadable_site_modules().toJs()];
  guest.destroy();
  // The wheels' files, with their bytecode, from the probe: unzipping and compiling
  // them in the snapshot's interpreter would grow its heap past what a restore fits.
  const site = probe.pyodide.runPython(`
import compileall, os, py_compile, sysconfig
_site = os.path.realpath(sysconfig.get_path("purelib"))
compileall.compile_dir(_site, quiet=2, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
_site`);
  const files = packFiles(probe.pyodide.FS, site);
  await probe.close();
  const entry = requireCache(cache);
  const { loadPyodide } = await import(pathToFileURL(entry).href);
  const pyodide = await loadPyodide({ indexURL: path.dirname(entry) + path.sep, env: { HOME: "/home/pyodide" }, _makeSnapshot: true });
  // Bytecode for Thaw's and the app's sources is compiled now and kept in memory,
  // written back as checked-hash .pyc files after a restore, so an edited source is
  // compiled again, never served stale.
  const wheels = wheelNames(cache, "runtime");
  writeFiles(pyodide.FS, files);
  installSources(pyodide.FS);
  installApp(pyodide, appPath);
  pyodide.globals.set("__thaw_preload", pyodide.toPy(modules));
  const loaded = pyodide.runPython(`
import compileall, importlib, os, py_compile, sys, types
for _name in __thaw_preload:
    try:
        importlib.import_module(_name)
    except Exception:
        pass
_cache = types.ModuleType("_thaw_edge_pycache", "bytecode kept by the memory snapshot")
_cache.files = {}
for _root in (${JSON.stringify(GUEST)}, ${JSON.stringify(APPS)}):
    compileall.compile_dir(_root, quiet=2, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    for _folder, _, _names in os.walk(_root):
        if os.path.basename(_folder) == "__pycache__":
            for _file in _names:
                with open(os.path.join(_folder, _file), "rb") as _handle:
                    _cache.files[os.path.join(_folder, _file)] = _handle.read()
sys.modules["_thaw_edge_pycache"] = _cache
del _name, _cache, _root, _folder, _names, _file, _handle
len(sys.modules)`);
  // The wheels' files go after the memory image, outside Python's heap: written back
  // straight into the file system after a restore.
  pyodide.globals.delete("__thaw_preload");
  const bytes = pyodide.makeMemorySnapshot();
  const version = pyodideVersionAt(entry);
  // Padded so the memory image starts 8-byte aligned (Pyodide reads it through typed arrays).
  let text = MEMORY_MAGIC + JSON.stringify({ pyodide: version, modules: loaded, wheels, image: bytes.byteLength });
  text += " ".repeat(7 - ((text.length + 7) % 8)) + "\n";
  const header = Buffer.from(text, "latin1");
  fs.writeFileSync(output, Buffer.concat([header, bytes, files]));
  return { bytes: header.byteLength + bytes.byteLength + files.byteLength, modules: loaded };
}

/** Copy an app (a folder, or a .py file with its folder) into Pyodide; its path there. */
export function installApp(pyodide, appPath) {
  const absolute = path.resolve(appPath);
  if (!fs.existsSync(absolute)) throw new EdgeSetupError(`${appPath} does not exist`);
  if (absolute.endsWith(".snap")) {
    // A snapshot carries the app's code and data files: only the file goes in.
    const target = `${APPS}/${path.basename(absolute)}`;
    return { target, bytes: copyFile(pyodide.FS, absolute, target) };
  }
  const isFile = fs.statSync(absolute).isFile();
  const folder = isFile ? path.dirname(absolute) : absolute;
  const inside = `${APPS}/${path.basename(folder)}`;
  const bytes = copyTree(pyodide.FS, folder, inside);
  return { target: isFile ? `${inside}/${path.basename(absolute)}` : inside, bytes };
}

/** An app opened inside Pyodide, answering fetch Requests. */
export class EdgeHost {
  constructor(pyodide, runtime, timings, sizes, nats = null) {
    this.pyodide = pyodide;
    this.nats = nats;
    this.timings = timings;
    this.sizes = sizes;
    this._runtime = runtime;
    this._handle = runtime.handle_js;
  }

  /** The fetch-style handler: a Request in, a Response out. */
  async handle(request) {
    const url = new URL(request.url);
    const body = request.method === "GET" || request.method === "HEAD" ? null : new Uint8Array(await request.arrayBuffer());
    const headers = [];
    request.headers.forEach((value, name) => headers.push([name, value]));
    const [status, outHeaders, outBody] = await this.handleParts(request.method, url.pathname + url.search, headers, body);
    return new Response(NO_BODY.has(status) || request.method === "HEAD" ? null : outBody, { status, headers: outHeaders });
  }

  /** The same without fetch objects: [status, [[name, value]...], Uint8Array]. */
  async handleParts(method, target, headers, body) {
    const answer = await this._handle(method, target, headers, body && body.length ? body : null);
    try {
      return answer.toJs();
    } finally {
      answer.destroy();
    }
  }

  async close() {
    await this._runtime.stop();
    this._handle.destroy();
    this._runtime.destroy();
    if (this.nats) await this.nats.close();
  }
}

/**
 * Boot Pyodide (unless given one), install and open the app at `appPath`; with
 * `nats` (a server URL) the app runs on JetStream and consumes its stream triggers.
 */
export async function openEdge(appPath, { cache = CACHE, booted = null, memorySnapshot = null, nats = null } = {}) {
  if (nats) requireCache(cache, { nats: true });
  const { pyodide, timings, sizes } = booted || (await bootPyodide({ cache, memorySnapshot }));
  const mark = performance.now();
  const app = installApp(pyodide, appPath);
  sizes.app = app.bytes;
  let bridge = null;
  if (nats) {
    try {
      bridge = await NatsBridge.open(nats, { cache });
    } catch (error) {
      throw new EdgeSetupError(`cannot connect to NATS at ${redact(nats)}: ${error.message}`);
    }
  }
  const guest = pyodide.pyimport("thaw.adapters.edge._guest");
  let runtime;
  try {
    // Not `load(target, null)`: Pyodide hands null to Python as jsnull, not None.
    runtime = bridge ? guest.EdgeRuntime.load(app.target, bridge) : guest.EdgeRuntime.load(app.target);
  } catch (error) {
    // A refused snapshot or an app that does not load: its message, not a wasm stack.
    if (bridge) await bridge.close();
    if (!LOAD_ERRORS.has(error?.type)) throw error;
    throw setupError(error);
  } finally {
    guest.destroy();
  }
  try {
    await runtime.start();
  } catch (error) {
    runtime.destroy();
    if (bridge) await bridge.close();
    if (!START_ERRORS.has(error?.type)) throw error;
    throw setupError(error);
  }
  timings.open_app_ms = performance.now() - mark;
  timings.boot_to_ready_ms = sum(timings, ["load_pyodide_ms", "unpack_wheels_ms", "copy_sources_ms", "open_app_ms"]);
  const host = new EdgeHost(pyodide, runtime, timings, sizes, bridge);
  host.appTarget = app.target;
  return host;
}

function sum(object, keys) {
  return keys.reduce((total, key) => total + (object[key] || 0), 0);
}

// ---------------------------------------------------------------- command line

function parseArgs(argv) {
  const options = { _: [], passthrough: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") { options.passthrough = argv.slice(i + 1); break; }
    if (arg.startsWith("--")) {
      const [key, inline] = arg.slice(2).split("=", 2);
      options[key] = inline !== undefined ? inline : argv[++i];
    } else options._.push(arg);
  }
  return options;
}

function finish(line, code) {
  process.stdout.write(line + "\n", () => process.exit(code));
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

/** The app a bundle serves when none is named: its snapshot, else its sources. */
function bundledApp() {
  if (!BUNDLE) return undefined;
  return path.join(HERE, BUNDLE.snapshot || BUNDLE.app);
}

async function commandServe(options) {
  const appPath = options._[0] || bundledApp();
  if (!appPath) throw new EdgeSetupError("usage: serve APP_DIR|APP.snap [--port N] [--host 127.0.0.1] [--nats URL]");
  const host = options.host || "127.0.0.1";
  const port = Number(options.port ?? 8787);
  const edge = await openEdge(appPath, { memorySnapshot: memorySnapshotOption(options), nats: options.nats || null });
  const server = http.createServer((req, res) => {
    const chunks = [];
    let size = 0;
    let refused = false;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY && !refused) {
        refused = true;
        res.writeHead(413, { "content-type": "application/problem+json", connection: "close" });
        res.end(JSON.stringify({ type: "urn:thaw:error:payload_too_large", title: "Content Too Large", status: 413, detail: `bodies are limited to ${MAX_BODY} bytes`, code: "payload_too_large" }));
        req.destroy();
      } else if (!refused) chunks.push(chunk);
    });
    req.on("end", async () => {
      if (refused) return;
      const headers = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2) headers.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
      const body = chunks.length ? new Uint8Array(Buffer.concat(chunks)) : null;
      try {
        const [status, outHeaders, outBody] = await edge.handleParts(req.method, req.url, headers, body);
        const fields = Object.fromEntries(outHeaders);
        if (!NO_BODY.has(status)) fields["content-length"] = String(outBody.byteLength);
        res.writeHead(status, fields);
        res.end(NO_BODY.has(status) || req.method === "HEAD" ? undefined : Buffer.from(outBody.buffer, outBody.byteOffset, outBody.byteLength));
      } catch (error) {
        console.error("edge: request failed:", error);
        res.writeHead(500, { "content-type": "application/problem+json" });
        res.end(JSON.stringify({ type: "urn:thaw:error:internal_error", title: "Internal Server Error", status: 500, detail: "the edge host failed to answer", code: "internal_error" }));
      }
    });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await new Promise((resolve, reject) => { server.once("error", reject); server.listen(port, host, resolve); });
  const address = server.address();
  console.log(JSON.stringify({ listening: `http://${address.address}:${address.port}`, nats: options.nats ? redact(options.nats) : null, timings: edge.timings, sizes: edge.sizes }));
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    setTimeout(() => { console.error("edge: shutdown took over 15 s; exiting"); process.exit(1); }, 15_000).unref();
    server.close();
    server.closeAllConnections();
    await edge.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function commandHandle(options) {
  const appPath = options._[0];
  if (!appPath) throw new EdgeSetupError("usage: handle APP_DIR < requests.json");
  const requests = JSON.parse(await readStdin());
  const edge = await openEdge(appPath, { memorySnapshot: memorySnapshotOption(options) });
  const responses = [];
  for (const item of requests) {
    const init = { method: item.method || "GET", headers: item.headers || {} };
    if (item.body !== undefined && item.body !== null) init.body = item.body;
    const response = await edge.handle(new Request(`http://edge.invalid${item.path}`, init));
    responses.push({ status: response.status, headers: Object.fromEntries(response.headers), body: await response.text() });
  }
  await edge.close();
  // Exit once written: do not wait for timers the app left behind.
  finish(JSON.stringify({ responses, timings: edge.timings, sizes: edge.sizes }), 0);
}

function ensureJspi() {
  // The test runner blocks on the event loop (asyncio.Runner), which Pyodide can
  // do only with JavaScript Promise Integration; Node 24 has it behind a flag.
  if (typeof WebAssembly.Suspending === "function") return;
  if (process.execArgv.includes("--experimental-wasm-jspi")) {
    throw new EdgeSetupError("this Node has no WebAssembly JSPI even with --experimental-wasm-jspi");
  }
  const child = spawnSync(process.execPath, ["--experimental-wasm-jspi", ...process.execArgv, ...process.argv.slice(1)], { stdio: "inherit" });
  process.exit(child.status ?? 1);
}

async function commandTest(options) {
  ensureJspi();
  const { pyodide } = await bootPyodide({ tests: true, output: "stdout" });
  const FS = pyodide.FS;
  copyTree(FS, path.join(ROOT, "tests"), `${GUEST}/tests`);
  copyFile(FS, path.join(ROOT, "adapters", "edge", "pyodide_tests", "test_in_pyodide.py"), `${GUEST}/tests/test_in_pyodide.py`);
  copyTree(FS, path.join(ROOT, "examples"), `${GUEST}/examples`);
  copyFile(FS, path.join(ROOT, "pyproject.toml"), `${GUEST}/pyproject.toml`);
  let snapshot = "";
  if (options.snapshot) {
    snapshot = `${GUEST}/foreign.snap`;
    copyFile(FS, path.resolve(options.snapshot), snapshot);
  }
  pyodide.runPython(`
import os, sys
os.chdir(${JSON.stringify(GUEST)})
if ${JSON.stringify(snapshot)}:
    os.environ["THAW_EDGE_FOREIGN_SNAPSHOT"] = ${JSON.stringify(snapshot)}
`);
  const runner = pyodide.pyimport("thaw.adapters.edge._pyodide_pytest");
  const summary = JSON.parse(await runner.run.callPromising(pyodide.toPy(options.passthrough)));
  // Tests may leave timers behind (a fetch waiting out its timeout); do not wait for them.
  finish(`edge-test-summary: ${JSON.stringify(summary)}`, summary.exit_code);
}

async function commandBench(options) {
  const appPath = options._[0];
  if (!appPath || !options.capability) throw new EdgeSetupError("usage: bench APP_DIR --capability NAME [--data JSON] [--trials N]");
  const trials = Number(options.trials ?? 300);
  const edge = await openEdge(appPath, { memorySnapshot: memorySnapshotOption(options) });
  const data = options.data ?? "{}";
  const route = options.route; // "METHOD /path" for the end-to-end handle() figures
  const report = { timings: edge.timings, sizes: edge.sizes };
  if (route) {
    const [method, target] = route.split(" ");
    const body = new TextEncoder().encode(data);
    const request = () => new Request(`http://edge.invalid${target}`, { method, body, headers: { "content-type": "application/json" } });
    const first = performance.now();
    const response = await edge.handle(request());
    report.first_response_ms = performance.now() - first;
    report.first_status = response.status;
    const samples = [];
    for (let i = 0; i < Number(options.requests ?? 2000); i++) {
      const t0 = performance.now();
      const answer = await edge.handle(request());
      await answer.arrayBuffer();
      samples.push((performance.now() - t0) * 1000);
    }
    report.handle_us = samples;
  }
  const bench = edge.pyodide.pyimport("thaw.adapters.edge._bench");
  const inside = await bench.measure_json(edge.appTarget, options.capability, data, trials);
  report.inside = JSON.parse(inside);
  bench.destroy();
  await edge.close();
  finish(JSON.stringify(report), 0);
}

function memorySnapshotOption(options) {
  const given = options["memory-snapshot"];
  if (given) return path.resolve(given);
  if (BUNDLE && BUNDLE.memory_snapshot && !options._[0]) return path.join(HERE, BUNDLE.memory_snapshot);
  return null;
}

async function commandMemorySnapshot(options) {
  const appPath = options._[0] || bundledApp();
  if (!appPath || !options.output) throw new EdgeSetupError("usage: memory-snapshot APP --output FILE");
  const made = await makeMemorySnapshot(appPath, path.resolve(options.output));
  finish(JSON.stringify({ memory_snapshot: path.resolve(options.output), ...made }), 0);
}

async function commandSnapshot(options) {
  // Bytecode is version-specific: build the app's snapshot inside Pyodide, for its Python.
  const appPath = options._[0];
  if (!appPath || !options.output) throw new EdgeSetupError("usage: snapshot APP_DIR --output FILE.snap");
  const { pyodide } = await bootPyodide();
  const app = installApp(pyodide, appPath);
  const build = pyodide.pyimport("thaw.adapters.edge._guest").build_snapshot_bytes;
  const proxy = build(app.target);
  const bytes = proxy.toJs();
  proxy.destroy();
  fs.writeFileSync(path.resolve(options.output), bytes);
  finish(JSON.stringify({ snapshot: path.resolve(options.output), bytes: bytes.byteLength, python: pyodide.runPython("import sys; sys.version.split()[0]") }), 0);
}

async function main(argv) {
  const options = parseArgs(argv.slice(1));
  const command = argv[0];
  const commands = { serve: commandServe, handle: commandHandle, test: commandTest, bench: commandBench, snapshot: commandSnapshot, "memory-snapshot": commandMemorySnapshot };
  if (!commands[command]) {
    console.error("usage: thaw_edge.mjs serve|handle|test|bench|snapshot|memory-snapshot ... (see the header of this file)");
    process.exit(2);
  }
  try {
    await commands[command](options);
  } catch (error) {
    if (error instanceof EdgeSetupError) {
      console.error(`thaw edge: ${error.message}`);
      process.exit(3);
    }
    throw error;
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main(process.argv.slice(2));
}
