// Web Worker of the live figures (web/live.js): loads the exported data once and trains the
// model of web/kaol.js off the page's thread, posting progress as it goes.
// Messages in: {id, task: 'finetune' | 'pretrain' | 'cell', args}; out: {id, type: 'progress' |
// 'done' | 'error', ...}.
import * as kaol from './kaol.js';

const loaded = new Map(), decoded = new WeakMap();

/** The exported file `file` (kaol.web) as 'json' or 'arrayBuffer', fetched once. */
function load(base, file, how) {
  if (!loaded.has(file)) {
    loaded.set(file, fetch(new URL(file, base)).then(r => {
      if (!r.ok) throw new Error(`could not load ${file}: HTTP ${r.status}`);
      return r[how]();
    }));
  }
  return loaded.get(file);
}

const HALF = (() => {       // float16 -> float64 for all 65536 bit patterns
  const t = new Float64Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    t[h] = s * (e === 0 ? f * 2 ** -24 : e === 31 ? (f ? NaN : Infinity) : (1 + f / 1024) * 2 ** (e - 15));
  }
  return t;
})();

/** The little-endian float16 or float32 values of `buf` as float64. */
function decode(buf, dtype) {
  if (dtype === 'float32') return Float64Array.from(new Float32Array(buf));
  if (dtype === 'float16') return Float64Array.from(new Uint16Array(buf), h => HALF[h]);
  throw new Error(`unknown dtype ${dtype}`);
}

/** W and V of a browser-scale run from its exported initialisation (kaol.web.browser_run). */
function initial(meta, buf) {
  const { m, T } = meta.model, all = decode(buf, meta.init_dtype);
  kaol.expectLength('initial W and V', all, T * T + T * m * T);
  return { W: all.slice(0, T * T), V: all.slice(T * T) };
}

function every(n, fn) {    // fn, called at most once every n ms, first n ms after this call (a short run posts no progress)
  let last = performance.now();
  return (...args) => { const now = performance.now(); if (now - last > n) { last = now; fn(...args); } };
}

const tasks = {
  /** Chapter 4: fine-tune the book-scale model from the shipped checkpoint (kaol.web.book_checkpoint). */
  async finetune({ base, N_ft, eta, steps, rank1 }, post) {
    const [meta, buf] = await Promise.all([load(base, 'finetune.json', 'json'), load(base, 'finetune.bin', 'arrayBuffer')]);
    const { m, lam, T } = meta.model, [U] = meta.V_shape;
    if (!decoded.has(buf)) decoded.set(buf, decode(buf, meta.V_dtype));     // decoded once, copied per run
    const V = decoded.get(buf).slice();
    kaol.expectLength('checkpoint V rows', V, U * m * T);
    kaol.expectLength('checkpoint row ids', meta.V_rows, U);
    const vrow = new Int32Array(T).fill(-1);
    meta.V_rows.forEach((t, i) => { vrow[t] = i; });
    const data = kaol.makeData(meta.data, N_ft);
    const progress = every(250, h => post({ type: 'progress', hist: h }));
    return kaol.finetune({ m, lam, V, vrow, qaS: meta.qaS }, data, { eta, steps, rank1 },
                         { onStep: (t, h) => progress(h) });
  },

  /** Chapter 3: pre-train the small data set from kaol's initialisation with the reader's rho_c and rates. */
  async pretrain({ base, rho_c, eta }, post) {
    const [meta, buf] = await Promise.all([load(base, 'pretrain.json', 'json'), load(base, 'pretrain.bin', 'arrayBuffer')]);
    const data = kaol.makeData(meta.data, meta.data.N_ft, rho_c);
    const hist = { steps: [], loss: [], attn: [] };
    const progress = every(250, () => post({ type: 'progress', hist }));
    kaol.pretrain(initial(meta, buf), data, meta.model, { ...meta.schedule, eta }, {
      logEvery: 5, onLog: r => { hist.steps.push(r.step); hist.loss.push(r.loss); hist.attn.push(r.attn); progress(); } });
    return { ...hist, H: kaol.entropy(meta.data) };
  },

  /** Chapter 6: pre-train then fine-tune one (K, R) cell at browser scale. */
  async cell({ base, K, R, N_ft, eta_ft, steps }, post) {
    const index = await load(base, 'cell.json', 'json');
    const run = index.runs.find(r => r.K === K && r.R === R);
    if (!run) throw new Error(`no browser-scale data for K = ${K}, R = ${R}: the book's grids vary R at K = 4 only`);
    const buf = await load(base, `${run.file}.bin`, 'arrayBuffer');
    const data = kaol.makeData(run.data, N_ft), params = initial(run, buf);
    const pt = kaol.pretrain(params, data, run.model, run.schedule, {
      logEvery: 20, onLog: r => post({ type: 'progress', phase: `pre-training, step ${r.step} of ${run.schedule.T}` }) });
    const vrow = Int32Array.from({ length: data.vocab.size }, (_, t) => t);
    const ft = kaol.finetune({ ...run.model, V: params.V, vrow, W: params.W }, data, { eta: eta_ft, steps });
    return { pt, ft, H: kaol.entropy(run.data), N_f: run.data.N_f, N_r: run.data.N_r };
  },
};

onmessage = async ({ data: { id, task, args } }) => {
  const t0 = performance.now();
  try {
    if (!tasks[task]) throw new Error(`unknown task ${task}`);
    const result = await tasks[task](args, msg => postMessage({ id, ...msg }));
    postMessage({ id, type: 'done', result, ms: performance.now() - t0 });
  } catch (err) {
    postMessage({ id, type: 'error', message: String(err && err.message || err) });
  }
};
