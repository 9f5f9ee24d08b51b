#!/usr/bin/env node
// BullMQ + Redis peer of Taskflow's five-tier workload, for the side-by-side benchmark.
//
//   REDIS_URL=redis://127.0.0.1:6390 [REDIS_PID=1234] [WORK_MS=0] node run.mjs <scenario> [options]
//
// WORK_MS_<TIER> (e.g. WORK_MS_CRITICAL=0) overrides WORK_MS for one tier.
//
// Scenarios (each prints exactly ONE JSON line on stdout; diagnostics go to stderr):
//   throughput --tasks N [--tier normal] [--add-concurrency 1]
//   priority   --backlog B --critical C [--add-concurrency 1] [--no-drain]
//   fairness   --flood F --calm C [--add-concurrency 1]   (one queue, 'normal': C jobs alone,
//              then F jobs of one tenant and C of another behind them; BullMQ's open-source
//              version has no groups, so nothing tells the tenants apart)
// Common:      [--timeout-seconds 300]
//
// See README.md beside this file for what is measured and why it is shaped this way.

import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

// Taskflow's per-tier "Max concurrency" (README "Tiers" / template.yaml). One Worker per tier.
const TIER_CONCURRENCY = { critical: 10, high: 5, normal: 4, low: 2, background: 2 };
const TIERS = Object.keys(TIER_CONCURRENCY);

// The auto-removal the BullMQ guide recommends for production ("keep a handful of completed jobs
// and a much larger value of failed jobs"); everything else is BullMQ's default.
const REMOVE_ON_COMPLETE = { count: 1000 };
const REMOVE_ON_FAIL = { count: 5000 };

const USAGE = `usage: REDIS_URL=redis://host:port [REDIS_PID=pid] [WORK_MS=ms] node run.mjs <scenario> [options]
  throughput --tasks N [--tier critical|high|normal|low|background] [--add-concurrency K]
  priority   --backlog B --critical C [--add-concurrency K] [--no-drain]
  fairness   --flood F --calm C [--add-concurrency K]
  common:    [--timeout-seconds S]   (default 300; exit 3 if the run has not finished by then)`;

function die(msg, code = 2) {
  process.stderr.write(`peer: ${msg}\n`);
  process.exit(code);
}

// ---------------------------------------------------------------- arguments

function parseCli(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        tasks: { type: 'string' },
        tier: { type: 'string', default: 'normal' },
        backlog: { type: 'string' },
        critical: { type: 'string' },
        flood: { type: 'string' },
        calm: { type: 'string' },
        'add-concurrency': { type: 'string', default: '1' },
        'timeout-seconds': { type: 'string', default: '300' },
        'no-drain': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (e) {
    die(`${e.message}\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (positionals.length !== 1) die(`expected one scenario\n${USAGE}`);
  const int = (name, min) => {
    const raw = values[name];
    if (raw === undefined) die(`--${name} is required for ${positionals[0]}\n${USAGE}`);
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min) die(`--${name} must be an integer >= ${min}, got ${raw}`);
    return n;
  };
  const opts = {
    scenario: positionals[0],
    addConcurrency: int('add-concurrency', 1),
    timeoutSeconds: Number(values['timeout-seconds']),
  };
  if (!(opts.timeoutSeconds > 0)) die('--timeout-seconds must be > 0');
  if (opts.scenario === 'throughput') {
    opts.tasks = int('tasks', 1);
    opts.tier = values.tier;
    if (!TIERS.includes(opts.tier)) die(`--tier must be one of ${TIERS.join(', ')}`);
  } else if (opts.scenario === 'priority') {
    opts.backlog = int('backlog', 0);
    opts.critical = int('critical', 1);
    opts.drain = !values['no-drain'];
  } else if (opts.scenario === 'fairness') {
    opts.flood = int('flood', 0);
    opts.calm = int('calm', 1);
  } else {
    die(`unknown scenario ${opts.scenario}\n${USAGE}`);
  }
  return opts;
}

// ---------------------------------------------------------------- measurement helpers

/** Nearest-rank percentiles, in ms rounded to 3 decimals. */
function stats(values) {
  if (values.length === 0) return { n: 0, p50: null, p95: null, p99: null, max: null, mean: null };
  const s = Float64Array.from(values).sort();
  const rank = (p) => s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
  const r = (x) => Math.round(x * 1000) / 1000;
  const sum = s.reduce((a, b) => a + b, 0);
  return { n: s.length, p50: r(rank(50)), p95: r(rank(95)), p99: r(rank(99)), max: r(s[s.length - 1]), mean: r(sum / s.length) };
}

let clkTck = 100;
try {
  clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
} catch {
  /* keep 100 */
}

/** utime+stime of a process in ms, from /proc/<pid>/stat; null when unreadable. */
function procCpuMs(pid) {
  if (!pid) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(rest[11]) + Number(rest[12])) * 1000) / clkTck;
  } catch {
    return null;
  }
}

function packageVersion(name) {
  try {
    const require = createRequire(import.meta.url);
    return JSON.parse(readFileSync(require.resolve(`${name}/package.json`), 'utf8')).version;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- the system under test

class Peer {
  constructor(redisUrl, workMs) {
    this.connection = { url: redisUrl };
    this.workMs = workMs;
    // Unique queue names per run, so repeated runs against one redis-server never see each other.
    this.runId = `${Date.now().toString(36)}-${process.pid}`;
    this.queues = {};
    this.workers = {};
    this.tier = {};
    this.errors = [];
    this.waiters = [];
    for (const t of TIERS) {
      this.tier[t] = {
        starts: new Map(), // job id -> times the processor was entered
        firstStart: new Map(), // job id -> performance.now() at first processor entry
        completions: new Map(), // job id -> 'completed' events
        queueToStart: [], // job.processedOn - job.timestamp (ms), at first start
        completedCount: 0,
        failedCount: 0,
        lastCompletion: 0, // performance.now()
      };
    }
  }

  async start() {
    // A short-lived side connection (outside the measured window): fail fast when Redis is not
    // there, and learn the server's version and pid.
    const probe = new Redis(this.connection.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 5000 });
    probe.on('error', () => {});
    try {
      await probe.connect();
      const info = await probe.info('server');
      this.redisVersion = /redis_version:(\S+)/.exec(info)?.[1] ?? null;
      this.redisInfoPid = Number(/process_id:(\d+)/.exec(info)?.[1]) || null;
    } catch (e) {
      die(`cannot reach Redis at ${this.connection.url}: ${e.message}`, 1);
    } finally {
      probe.disconnect();
    }
    for (const t of TIERS) {
      const q = new Queue(`taskflow-${this.runId}-${t}`, { connection: this.connection });
      q.on('error', (err) => {
        if (this.errors.length < 5) this.errors.push(`${t} queue: ${err?.message}`);
        process.stderr.write(`peer: ${t} queue error: ${err?.message}\n`);
      });
      this.queues[t] = q;
    }
    for (const t of TIERS) {
      const rec = this.tier[t];
      const workMs = this.workMs[t];
      // The work of Taskflow's `echo` executor: the result is the task's input.
      const processor = async (job) => {
        const now = performance.now();
        const n = (rec.starts.get(job.id) ?? 0) + 1;
        rec.starts.set(job.id, n);
        if (n === 1) {
          rec.firstStart.set(job.id, now);
          rec.queueToStart.push(job.processedOn - job.timestamp);
        }
        if (workMs > 0) await sleep(workMs);
        return job.data;
      };
      const w = new Worker(this.queues[t].name, processor, {
        connection: this.connection,
        concurrency: TIER_CONCURRENCY[t],
        removeOnComplete: REMOVE_ON_COMPLETE,
        removeOnFail: REMOVE_ON_FAIL,
      });
      w.on('completed', (job) => {
        rec.completions.set(job.id, (rec.completions.get(job.id) ?? 0) + 1);
        rec.completedCount += 1;
        rec.lastCompletion = performance.now();
        this.poke();
      });
      w.on('failed', (job, err) => {
        rec.failedCount += 1;
        if (this.errors.length < 5) this.errors.push(`${t} job ${job?.id}: ${err?.message}`);
        this.poke();
      });
      w.on('error', (err) => {
        if (this.errors.length < 5) this.errors.push(`${t} worker: ${err?.message}`);
        process.stderr.write(`peer: ${t} worker error: ${err?.message}\n`);
      });
      this.workers[t] = w;
    }
    await Promise.all([
      ...Object.values(this.queues).map((q) => q.waitUntilReady()),
      ...Object.values(this.workers).map((w) => w.waitUntilReady()),
    ]);
  }

  poke() {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  /** Resolves when pred() holds; re-checked after each completion/failure and every 250 ms. */
  async until(pred) {
    while (!pred()) {
      await Promise.race([new Promise((r) => this.waiters.push(r)), sleep(250)]);
    }
  }

  /**
   * Adds n jobs to a tier with `addConcurrency` adds in flight; records each add()'s latency and
   * the returned job ids, in order.
   */
  async enqueue(tier, n, addConcurrency, latencies, ids) {
    const q = this.queues[tier];
    let next = 0;
    const lane = async () => {
      while (next < n) {
        const i = next++;
        const input = { seq: i, tier, title: `bench ${tier} task ${i}`, payload: { invoice: i, note: 'peer' } };
        const t0 = performance.now();
        const job = await q.add('echo', input);
        latencies.push(performance.now() - t0);
        ids[i] = job.id;
      }
    };
    await Promise.all(Array.from({ length: Math.min(addConcurrency, n) }, lane));
  }

  /** Jobs still waiting/active/delayed across the given tiers (a Redis round trip each). */
  async pending(tiers) {
    let total = 0;
    for (const t of tiers) {
      const c = await this.queues[t].getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'paused', 'waiting-children');
      total += Object.values(c).reduce((a, b) => a + b, 0);
    }
    return total;
  }

  /**
   * Waits until every id in `want` (tier -> ids) completed or failed. If progress stalls for a
   * second and Redis holds nothing pending for those tiers, the missing ones are lost: stop.
   */
  async awaitAll(want) {
    const done = () =>
      Object.entries(want).every(([t, ids]) => this.tier[t].completedCount + this.tier[t].failedCount >= ids.length);
    let lastProgress = performance.now();
    let lastCount = -1;
    while (!done()) {
      await Promise.race([new Promise((r) => this.waiters.push(r)), sleep(250)]);
      const count = Object.keys(want).reduce((a, t) => a + this.tier[t].completedCount + this.tier[t].failedCount, 0);
      if (count !== lastCount) {
        lastCount = count;
        lastProgress = performance.now();
      } else if (performance.now() - lastProgress > 1000 && !done()) {
        if ((await this.pending(Object.keys(want))) === 0 && !done()) {
          await sleep(500); // a last completion may be in flight
          if (!done()) return;
        }
        lastProgress = performance.now();
      }
    }
  }

  /** lost = added ids never completed; duplicated = ids whose processor ran (or completed) more than once. */
  integrity(tier, ids) {
    const rec = this.tier[tier];
    let lost = 0;
    for (const id of ids) if (!rec.completions.has(id)) lost += 1;
    let duplicated = 0;
    const seen = new Set([...rec.starts.keys(), ...rec.completions.keys()]);
    for (const id of seen) if ((rec.starts.get(id) ?? 0) > 1 || (rec.completions.get(id) ?? 0) > 1) duplicated += 1;
    return { lost, duplicated };
  }

  async close({ obliterate = true } = {}) {
    await Promise.all(Object.values(this.workers).map((w) => w.close()));
    if (obliterate) {
      for (const q of Object.values(this.queues)) {
        try {
          await q.obliterate({ force: true });
        } catch (e) {
          process.stderr.write(`peer: obliterate ${q.name}: ${e.message}\n`);
        }
      }
    }
    await Promise.all(Object.values(this.queues).map((q) => q.close()));
  }
}

// ---------------------------------------------------------------- CPU accounting

function cpuSnapshot(redisPid) {
  return { node: process.cpuUsage(), redisMs: procCpuMs(redisPid) };
}

function cpuReport(before, after, tasks, redisPid, redisPidSource) {
  const userMs = (after.node.user - before.node.user) / 1000;
  const systemMs = (after.node.system - before.node.system) / 1000;
  const nodeMs = userMs + systemMs;
  const redisMs = before.redisMs === null || after.redisMs === null ? null : after.redisMs - before.redisMs;
  const r = (x) => (x === null ? null : Math.round(x * 1000) / 1000);
  return {
    node_user_ms: r(userMs),
    node_system_ms: r(systemMs),
    node_ms: r(nodeMs),
    redis_ms: r(redisMs),
    redis_pid: redisPid ?? null,
    redis_pid_source: redisPidSource,
    redis_clk_tck: clkTck,
    tasks,
    node_ms_per_task: r(nodeMs / tasks),
    redis_ms_per_task: redisMs === null ? null : r(redisMs / tasks),
    total_ms_per_task: redisMs === null ? null : r((nodeMs + redisMs) / tasks),
    // The same figures as CPU seconds per 1,000 tasks (ms per task == s per 1,000 tasks).
    node_seconds_per_1000: r(nodeMs / tasks),
    redis_seconds_per_1000: redisMs === null ? null : r(redisMs / tasks),
  };
}

// ---------------------------------------------------------------- scenarios

async function throughput(peer, opts, cpu) {
  const { tier, tasks } = opts;
  const addLat = [];
  const ids = new Array(tasks);
  const cpuBefore = cpu.snap();
  const t0 = performance.now();
  await peer.enqueue(tier, tasks, opts.addConcurrency, addLat, ids);
  const addsDone = performance.now();
  await peer.awaitAll({ [tier]: ids });
  const rec = peer.tier[tier];
  const end = rec.lastCompletion > 0 ? rec.lastCompletion : performance.now();
  const cpuAfter = cpu.snap();
  const wallMs = end - t0;
  const { lost, duplicated } = peer.integrity(tier, ids);
  return {
    tier,
    tasks,
    concurrency: TIER_CONCURRENCY[tier],
    add_concurrency: opts.addConcurrency,
    completed: rec.completedCount,
    completion_rate: round3((rec.completedCount * 100) / tasks),
    failed: rec.failedCount,
    lost,
    duplicated,
    wall_ms: round3(wallMs),
    enqueue_ms: round3(addsDone - t0),
    tasks_per_hour: Math.round((rec.completedCount / wallMs) * 3.6e6),
    add_latency_ms: stats(addLat),
    queue_to_start_ms: stats(rec.queueToStart),
    cpu: cpu.report(cpuBefore, cpuAfter, tasks),
  };
}

async function priority(peer, opts, cpu) {
  const { backlog, critical } = opts;
  const bgLat = [];
  const critLat = [];
  const bgIds = new Array(backlog);
  const critIds = new Array(critical);
  const cpuBefore = cpu.snap();
  const t0 = performance.now();
  await peer.enqueue('background', backlog, opts.addConcurrency, bgLat, bgIds);
  const bg = peer.tier.background;
  const cr = peer.tier.critical;
  const critAddStart = performance.now();
  const backlogAtCriticalAdd = backlog - bg.firstStart.size; // not yet started when critical adds begin
  await peer.enqueue('critical', critical, opts.addConcurrency, critLat, critIds);
  const critAddsDone = performance.now();

  await peer.awaitAll({ critical: critIds });
  const criticalDoneAt = performance.now();
  const lastCritStart = Math.max(...cr.firstStart.values());
  if (opts.drain) await peer.awaitAll({ critical: critIds, background: bgIds });
  const end = opts.drain ? Math.max(bg.lastCompletion, cr.lastCompletion) : criticalDoneAt;
  const cpuAfter = cpu.snap();

  let bgBeforeLastCrit = 0;
  let bgBetween = 0;
  for (const s of bg.firstStart.values()) {
    if (s < lastCritStart) {
      bgBeforeLastCrit += 1;
      if (s >= critAddStart) bgBetween += 1;
    }
  }
  const ci = peer.integrity('critical', critIds);
  const bi = opts.drain ? peer.integrity('background', bgIds) : { lost: null, duplicated: peer.integrity('background', []).duplicated };
  const wallMs = end - t0;
  return {
    backlog,
    critical,
    drained: opts.drain,
    concurrency: { critical: TIER_CONCURRENCY.critical, background: TIER_CONCURRENCY.background },
    add_concurrency: opts.addConcurrency,
    // queue-to-start (job.processedOn - job.timestamp) of the critical jobs
    critical_start_ms: stats(cr.queueToStart),
    critical_add_latency_ms: stats(critLat),
    critical_enqueue_ms: round3(critAddsDone - critAddStart),
    critical_last_start_after_first_add_ms: round3(lastCritStart - critAddStart),
    background_waiting_when_critical_added: backlogAtCriticalAdd,
    background_started_before_last_critical_start: bgBeforeLastCrit,
    // started after the first critical add() began and before the last critical job started
    background_started_meanwhile: bgBetween,
    background_queue_to_start_ms: stats(bg.queueToStart),
    background_add_latency_ms: stats(bgLat),
    completed: { critical: cr.completedCount, background: bg.completedCount },
    failed: { critical: cr.failedCount, background: bg.failedCount },
    lost: { critical: ci.lost, background: bi.lost },
    duplicated: { critical: ci.duplicated, background: bi.duplicated },
    wall_ms: round3(wallMs),
    tasks_per_hour: Math.round(((cr.completedCount + bg.completedCount) / wallMs) * 3.6e6),
    cpu: cpu.report(cpuBefore, cpuAfter, cr.completedCount + bg.completedCount),
  };
}

/** The calm tenant's queue-to-start (from the moment its adds began), alone and behind a flood. */
async function fairness(peer, opts, cpu) {
  const { flood, calm } = opts;
  const rec = peer.tier.normal;
  const startsSince = (ids, t) => ids.map((id) => rec.firstStart.get(id) - t);
  const cpuBefore = cpu.snap();
  const aloneIds = new Array(calm);
  const tAlone = performance.now();
  await peer.enqueue('normal', calm, opts.addConcurrency, [], aloneIds);
  await peer.awaitAll({ normal: aloneIds });
  const alone = stats(startsSince(aloneIds, tAlone));
  const floodIds = new Array(flood);
  const t0 = performance.now();
  await peer.enqueue('normal', flood, opts.addConcurrency, [], floodIds);
  const calmIds = new Array(calm);
  const tCalm = performance.now();
  await peer.enqueue('normal', calm, opts.addConcurrency, [], calmIds);
  // awaitAll counts a tier's completions: everything so far. One queue is FIFO, so the calm
  // tenant's jobs finish last anyway.
  await peer.awaitAll({ normal: new Array(calm + flood + calm) });
  const behind = stats(startsSince(calmIds, tCalm));
  const cpuAfter = cpu.snap();
  return {
    flood,
    calm,
    concurrency: TIER_CONCURRENCY.normal,
    calm_alone_start_ms: alone,
    calm_behind_flood_start_ms: behind,
    p99_ratio: alone.p99 > 0 ? round3(behind.p99 / alone.p99) : null,
    wall_ms: round3(performance.now() - t0),
    cpu: cpu.report(cpuBefore, cpuAfter, rec.completedCount),
  };
}

function round3(x) {
  return Math.round(x * 1000) / 1000;
}

// ---------------------------------------------------------------- main

async function main() {
  const opts = parseCli(process.argv.slice(2));
  const redisUrl = process.env.REDIS_URL;
  if (!redisUrl) die('REDIS_URL is not set (e.g. redis://127.0.0.1:6390)');
  // WORK_MS: sleep per task in every tier (default 0: pure echo); WORK_MS_<TIER> overrides one tier.
  const workMs = {};
  for (const t of TIERS) {
    const name = `WORK_MS_${t.toUpperCase()}`;
    const raw = process.env[name] ?? process.env.WORK_MS ?? '0';
    const v = Number(raw);
    if (raw === '' || !(v >= 0)) die(`${process.env[name] !== undefined ? name : 'WORK_MS'} must be a number >= 0, got '${raw}'`);
    workMs[t] = v;
  }

  const guard = setTimeout(() => {
    die(`timed out after ${opts.timeoutSeconds} s (--timeout-seconds); scenario ${opts.scenario} did not finish`, 3);
  }, opts.timeoutSeconds * 1000);

  const peer = new Peer(redisUrl, workMs);
  await peer.start();

  // Redis CPU: REDIS_PID if given, else the pid Redis reports when it runs on this host.
  let redisPid = Number(process.env.REDIS_PID) || null;
  let redisPidSource = redisPid ? 'REDIS_PID' : null;
  if (!redisPid && /^(127\.|localhost|\[?::1)/.test(new URL(redisUrl).hostname) && procCpuMs(peer.redisInfoPid) !== null) {
    redisPid = peer.redisInfoPid;
    redisPidSource = 'INFO process_id';
  }
  if (redisPid && procCpuMs(redisPid) === null) {
    process.stderr.write(`peer: cannot read /proc/${redisPid}/stat; redis CPU not reported\n`);
  }
  const cpu = {
    snap: () => cpuSnapshot(redisPid),
    report: (b, a, n) => cpuReport(b, a, n, redisPid, redisPidSource),
  };

  const started = performance.now();
  const scenarios = { throughput, priority, fairness };
  const result = await scenarios[opts.scenario](peer, opts, cpu);
  await peer.close();
  clearTimeout(guard);

  const line = {
    peer: 'bullmq',
    scenario: opts.scenario,
    ok: true,
    work_ms: workMs,
    versions: {
      node: process.version,
      bullmq: packageVersion('bullmq'),
      ioredis: packageVersion('ioredis'),
      redis: peer.redisVersion,
    },
    job_options: { removeOnComplete: REMOVE_ON_COMPLETE, removeOnFail: REMOVE_ON_FAIL },
    ...result,
    // The peer's own processes (this Node process) and its datastore, CPU s per 1,000 tasks.
    cpu_seconds_per_1000: result.cpu.node_seconds_per_1000,
    redis_cpu_seconds_per_1000: result.cpu.redis_seconds_per_1000,
    run_ms: round3(performance.now() - started),
    errors: peer.errors,
  };
  const lostAny = [line.lost].flatMap((l) => (typeof l === 'object' && l !== null ? Object.values(l) : [l]));
  const dupAny = [line.duplicated].flatMap((d) => (typeof d === 'object' && d !== null ? Object.values(d) : [d]));
  line.ok = lostAny.every((x) => !x) && dupAny.every((x) => !x) && peer.errors.length === 0;
  process.stdout.write(`${JSON.stringify(line)}\n`);
  process.exit(0);
}

main().catch((e) => die(`failed: ${e?.stack ?? e}`, 1));
