// The live figures of the HTML book: every element with data-kaol-live="finetune" | "pretrain" |
// "cell" (the snippets web/embed/<name>.html) gets its controls wired to a Web Worker that
// trains the model of web/kaol.js (web/worker.js), and its curves drawn with plotly.js (served
// by the book, book/_ext/plotly_static.py). Each element reports its state for readers and tests:
// data-kaol-status = running | done | error, data-kaol-ms = wall time of its last run (settings
// read to curves drawn), data-kaol-worker-ms = the part of it spent in the worker (loading and
// training), data-kaol-runs = number of finished runs.

const BASE = new URL('./data/', import.meta.url);
let worker = null, nextId = 0;
const pending = new Map();

/** Run `task` in the shared worker; `onProgress(msg)` sees its progress messages. */
function call(task, args, onProgress) {
  if (!worker) {
    worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    worker.onmessage = ({ data }) => {
      const p = pending.get(data.id);
      if (!p) return;
      if (data.type === 'progress') return p.onProgress(data);
      pending.delete(data.id);
      data.type === 'done' ? p.resolve(data) : p.reject(new Error(data.message));
    };
    worker.onerror = e => { for (const p of pending.values()) p.reject(new Error(e.message || 'the worker failed to start')); pending.clear(); };
  }
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onProgress });
    worker.postMessage({ id, task, args: { base: BASE.href, ...args } });
  });
}

/** The values of the element's named inputs (range: number, checkbox: boolean, select: number). */
function values(el) {
  const out = {};
  for (const input of el.querySelectorAll('input[name], select[name]')) {
    out[input.name] = input.type === 'checkbox' ? input.checked : Number(input.value);
    const shown = input.parentElement.querySelector('output');
    if (shown) shown.textContent = input.value;
  }
  return out;
}

const steps = n => Array.from({ length: n }, (_, i) => i);

function draw(el, traces, layout) {
  const div = el.querySelector('.kaol-live-plot');
  if (!window.Plotly) throw new Error('plotly.js is not on the page');
  window.Plotly.react(div, traces, { height: 340, margin: { t: 30, r: 20, b: 45, l: 55 }, legend: { orientation: 'h', y: -0.2 },
                                     ...layout }, { displaylogo: false, responsive: true });
}

function say(el, text) { el.querySelector('.kaol-live-msg').textContent = text; }

const figures = {
  /** Chapter 4: OOD accuracy during fine-tuning of the book-scale model. */
  finetune: {
    task: 'finetune',
    args: v => ({ N_ft: v.N_ft, eta: v.eta, steps: v.steps, rank1: v.rank1 }),
    show(el, h, a, done) {
      const x = steps(h.accFreq.length), traces = [
        { x, y: h.accFreq, name: 'unseen frequent facts', line: { color: '#1f77b4' } },
        { x, y: h.accRare, name: 'rare facts', line: { color: '#d62728', dash: 'dash' } }];
      const ref = el.kaolRef && el.kaolRef.reference[a.rank1 ? 'rank1' : 'full'];
      if (done && ref && a.N_ft === el.kaolRef.data.N_ft && Math.abs(a.eta - ref.eta) < 1e-9 && a.steps === ref.steps) {
        const k = ref.shipped_float64;
        traces.push({ x: steps(k.acc_freq.length), y: k.acc_freq, name: 'kaol (Python), frequent', mode: 'markers', marker: { size: 4, color: '#1f77b4', symbol: 'circle-open' } },
                    { x: steps(k.acc_rare.length), y: k.acc_rare, name: 'kaol (Python), rare', mode: 'markers', marker: { size: 4, color: '#d62728', symbol: 'circle-open' } });
      }
      draw(el, traces, { xaxis: { title: { text: 'fine-tuning step' }, range: [0, a.steps] }, yaxis: { title: { text: 'OOD accuracy' }, range: [0, 1.02] },
                         title: { text: `Ñ_f = ${a.N_ft}, η_FT = ${a.eta.toPrecision(3)}, ${a.rank1 ? 'rank-1' : 'full'} updates`, font: { size: 13 } } });
      const last = h.accFreq.length - 1;
      if (done) say(el, `step ${last}: ${(100 * h.accFreq[last]).toFixed(1)}% of the unseen frequent facts and ${(100 * h.accRare[last]).toFixed(1)}% of the rare facts answered right.`);
    },
  },

  /** Chapter 3: loss and attention during pre-training of the small data set. */
  pretrain: {
    task: 'pretrain',
    args: v => ({ rho_c: v.rho_c, eta: [v.eta1, v.eta2, v.eta3] }),
    show(el, h, a, done) {
      const at = (row, c) => h.attn.map(m => m[row][c]);
      const traces = [
        { x: h.steps, y: h.loss, name: 'loss', line: { color: 'black' } },
        { x: [0, h.steps[h.steps.length - 1] || 0], y: [h.H, h.H], name: 'H (minimum)', line: { color: 'gray', dash: 'dot' } },
        { x: h.steps, y: at(0, 0), name: 'c on (c,s)', xaxis: 'x2', yaxis: 'y2', line: { color: '#7f7f7f' } },
        { x: h.steps, y: at(1, 0), name: 'c on (c,s,r)', xaxis: 'x2', yaxis: 'y2', line: { color: '#bcbd22' } },
        { x: h.steps, y: at(1, 1), name: 's on (c,s,r)', xaxis: 'x2', yaxis: 'y2', line: { color: '#1f77b4' } },
        { x: h.steps, y: at(1, 2), name: 'r on (c,s,r)', xaxis: 'x2', yaxis: 'y2', line: { color: '#2ca02c' } }];
      const ref = el.kaolRef, s = ref && ref.schedule;
      if (ref && a.rho_c === ref.data.rho_c && a.eta.every((e, i) => e === s.eta[i]))
        traces.push({ x: ref.reference.steps, y: ref.reference.loss, name: 'kaol (Python, float32)', mode: 'markers',
                      marker: { size: 3, color: 'black', symbol: 'circle-open' } });
      draw(el, traces, { grid: { rows: 1, columns: 2, pattern: 'independent' },
                         xaxis: { title: { text: 'step' }, range: [0, s ? s.T : 400] }, yaxis: { title: { text: 'loss' }, type: 'log' },
                         xaxis2: { title: { text: 'step' }, range: [0, s ? s.T : 400] }, yaxis2: { title: { text: 'attention' }, range: [0, 1] } });
      if (done) say(el, `final loss ${h.loss[h.loss.length - 1].toFixed(4)} (H = ${h.H.toFixed(4)}).`);
    },
    progress: (el, msg, a) => figures.pretrain.show(el, { ...msg.hist, H: NaN }, a, false),
  },

  /** Chapter 6: one (K, N~_f, R) cell at browser scale beside the stored book-scale value. */
  cell: {
    task: 'cell',
    args: v => ({ K: v.K, R: v.R, N_ft: Math.round(v.N_ft * 30 / 100), eta_ft: 30, steps: 200, N_ft_book: v.N_ft }),
    show(el, r, a, done) {
      if (!done) return;
      const x = steps(r.ft.accFreq.length), acc = r.ft.accFreq.map((f, i) => (f * (r.N_f - a.N_ft) + r.ft.accRare[i] * r.N_r) / (r.N_f - a.N_ft + r.N_r));
      const book = el.kaolRef && el.kaolRef.book_scale.cells.find(c => c.K === a.K && c.R === a.R && c.N_ft === a.N_ft_book);
      const traces = [{ x, y: acc, name: `browser: N_f = ${r.N_f}, Ñ_f = ${a.N_ft}`, line: { color: '#1f77b4' } }];
      if (book) traces.push({ x: [0, x.length - 1], y: [book.best_mean, book.best_mean], name: `stored, book scale (N_f = 100, Ñ_f = ${a.N_ft_book}, best step, ${book.best_count} seeds)`,
                              line: { color: '#ff7f0e', dash: 'dash' } });
      draw(el, traces, { xaxis: { title: { text: 'fine-tuning step' } }, yaxis: { title: { text: 'OOD accuracy (all unseen facts)' }, range: [0, 1.02] } });
      say(el, `browser scale: pre-training loss ${r.pt.loss[r.pt.loss.length - 1].toFixed(3)} (H = ${r.H.toFixed(3)}), best OOD accuracy ${(100 * Math.max(...acc.slice(1))).toFixed(1)}%`
              + (book ? `; stored book-scale value ${(100 * book.best_mean).toFixed(1)}% ± ${(100 * book.best_std).toFixed(1)}%.` : '.'));
    },
    progress: (el, msg) => say(el, msg.phase),
  },
};

/** Wire one live element: run now, and again (latest settings only) after every change. */
function mount(el) {
  const fig = figures[el.dataset.kaolLive];
  if (!fig) return el.setAttribute('data-kaol-status', 'error');
  let busy = false, again = false;
  const go = async () => {
    if (busy) { again = true; return; }
    busy = true;
    const a = fig.args(values(el)), t0 = performance.now();
    el.setAttribute('data-kaol-status', 'running');
    say(el, 'running in your browser...');
    try {
      const { result, ms } = await call(fig.task, a, msg => (fig.progress || ((e, m, x) => fig.show(e, m.hist, x, false)))(el, msg, a));
      fig.show(el, result, a, true);
      el.setAttribute('data-kaol-ms', String(Math.round(performance.now() - t0)));
      el.setAttribute('data-kaol-worker-ms', String(Math.round(ms)));
      el.setAttribute('data-kaol-runs', String(Number(el.dataset.kaolRuns || 0) + 1));
      el.setAttribute('data-kaol-status', 'done');
    } catch (err) {
      say(el, `error: ${err.message}`);
      el.setAttribute('data-kaol-status', 'error');
    }
    busy = false;
    if (again) { again = false; go(); }
  };
  for (const input of el.querySelectorAll('input[name], select[name]')) {
    input.addEventListener('input', () => values(el));
    input.addEventListener('change', go);
  }
  const ref = el.dataset.kaolRef;
  (ref ? fetch(new URL(ref, BASE)).then(r => r.json()).then(j => { el.kaolRef = j; }) : Promise.resolve())
    .catch(() => {}).then(go);
}

document.querySelectorAll('[data-kaol-live]').forEach(mount);
