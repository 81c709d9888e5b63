// web/kaol.js's fine-tuning against the plain loop it replaces, to the bit: `finetune` skips
// work (fixed attention hoisted, V[s_i] updated in its row's pass, test rows recomputed only
// when a bound says their argmax may have changed, blocks stored transposed) but must give the
// same numbers as running `run` on the Q&A rows at every step (benchmarks/README.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as kaol from '../../web/kaol.js';

const fx = JSON.parse(readFileSync(new URL('./fixtures.json', import.meta.url)));

/** Jacobi eigenvector and rank-1 approximation as first written (dense Gram matrix). */
function topEigenvector(K, n) {
  const A = Float64Array.from(K), Q = new Float64Array(n * n);
  for (let i = 0; i < n; i++) Q[i * n + i] = 1;
  for (let sweep = 0; sweep < 50; sweep++) {
    let off = 0, all = 0;
    for (let i = 0; i < n * n; i++) { all += A[i] * A[i]; if (i % (n + 1)) off += A[i] * A[i]; }
    if (off <= 1e-32 * all) break;
    for (let p = 0; p < n - 1; p++) for (let q = p + 1; q < n; q++) {
      const apq = A[p * n + q];
      if (apq === 0) continue;
      const theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
      const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
      const c = 1 / Math.sqrt(t * t + 1), s = t * c;
      for (let k = 0; k < n; k++) {
        const kp = k * n + p, kq = k * n + q, x = A[kp], y = A[kq], u = Q[kp], v = Q[kq];
        A[kp] = c * x - s * y; A[kq] = s * x + c * y;
        Q[kp] = c * u - s * v; Q[kq] = s * u + c * v;
      }
      for (let k = 0; k < n; k++) {
        const pk = p * n + k, qk = q * n + k, x = A[pk], y = A[qk];
        A[pk] = c * x - s * y; A[qk] = s * x + c * y;
      }
    }
  }
  let top = 0;
  for (let i = 1; i < n; i++) if (A[i * n + i] > A[top * n + top]) top = i;
  return Float64Array.from({ length: n }, (_, i) => Q[i * n + top]);
}

function rank1(M, rows, cols) {
  const K = new Float64Array(rows * rows);
  for (let i = 0; i < rows; i++) for (let k = 0; k <= i; k++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += M[i * cols + c] * M[k * cols + c];
    K[i * rows + k] = K[k * rows + i] = s;
  }
  const u = topEigenvector(K, rows), uM = new Float64Array(cols);
  for (let i = 0; i < rows; i++) for (let c = 0; c < cols; c++) uM[c] += u[i] * M[i * cols + c];
  for (let i = 0; i < rows; i++) for (let c = 0; c < cols; c++) M[i * cols + c] = u[i] * uM[c];
}

/** Fine-tuning as first written: `run` on the test rows and on the fine-tuned rows at every step. */
function plainFinetune({ m, lam = 1, V, vrow, W, qaS }, data, { eta, steps, rank1: lowRank = false }) {
  const T = data.vocab.size, mT = m * T, train = data.qaTrain, test = data.qaTest;
  const weights = rows => {
    const S = W ? kaol.attention(W, T, rows, data.rho) : Float64Array.from({ length: 2 * rows.n }, (_, k) => qaS[2 * rows.fact[k >> 1] + (k & 1)]);
    return S.map((x, k) => x * data.rho[rows.tok[k]]);
  };
  const aTrain = weights(train), aTest = weights(test), hist = { loss: [], accFreq: [], accRare: [] };
  for (let t = 0; t <= steps; t++) {
    const ev = kaol.run(V, vrow, T, m, lam, test, aTest, { loss: false });
    let hf = 0, hr = 0;
    for (let i = 0; i < test.n; i++) {
      const hit = ev.pred[i] === data.vocab.a(test.fact[i]) ? 1 : 0;
      if (i < data.nFreq) hf += hit; else hr += hit;
    }
    hist.accFreq.push(data.nFreq ? hf / data.nFreq : NaN);
    hist.accRare.push(data.nRare ? hr / data.nRare : NaN);
    const out = kaol.run(V, vrow, T, m, lam, train, aTrain, { grad: t < steps });
    hist.loss.push(out.loss);
    if (t === steps) break;
    if (lowRank) rank1(out.gV, train.used.length, mT);
    train.used.forEach((tok, k) => { for (let c = 0; c < mT; c++) V[vrow[tok] * mT + c] -= eta * out.gV[k * mT + c]; });
  }
  return hist;
}

/** Assert that both fine-tunings give the same losses, accuracies and V, to the bit. */
function same(model, data, opts) {
  const V1 = Float64Array.from(model.V), V2 = Float64Array.from(model.V);
  const h1 = kaol.finetune({ ...model, V: V1 }, data, opts), h2 = plainFinetune({ ...model, V: V2 }, data, opts);
  for (const k of ['loss', 'accFreq', 'accRare']) assert.deepEqual(h1[k], h2[k], `${k} (${JSON.stringify(opts)})`);
  const at = V1.findIndex((x, i) => !Object.is(x, V2[i]));
  assert.equal(at, -1, `V differs at ${at} (${JSON.stringify(opts)})`);
}

test('fine-tuning gives the numbers of the plain loop, to the bit (fixture model)', () => {
  const { m, lam, T } = fx.model, data = kaol.makeData(fx.data);
  const params = { W: Float64Array.from(fx.init.W), V: Float64Array.from(fx.init.V) };
  kaol.pretrain(params, data, { m, lam }, fx.pretrain.schedule);
  const vrow = Int32Array.from({ length: T }, (_, t) => t);
  for (const N_ft of [1, 3, fx.data.N_f]) {
    const d = kaol.makeData(fx.data, N_ft), model = { m, lam, V: params.V, vrow, W: params.W };
    for (const eta of [1, 10, 60]) for (const lowRank of [false, true]) same(model, d, { eta, steps: 25, rank1: lowRank });
  }
});

test('fine-tuning gives the numbers of the plain loop, to the bit (shipped book-scale checkpoint)', () => {
  const meta = JSON.parse(readFileSync(new URL('../../web/data/finetune.json', import.meta.url)));
  const buf = readFileSync(new URL('../../web/data/finetune.bin', import.meta.url));
  assert.equal(meta.V_dtype, 'float16');
  const half = h => (h & 0x8000 ? -1 : 1) * (((h >> 10) & 0x1f) === 0 ? (h & 0x3ff) * 2 ** -24 : (1 + (h & 0x3ff) / 1024) * 2 ** (((h >> 10) & 0x1f) - 15));
  const V = Float64Array.from(new Uint16Array(buf.buffer, buf.byteOffset, buf.byteLength / 2), half);
  const { m, lam, T } = meta.model, vrow = new Int32Array(T).fill(-1);
  meta.V_rows.forEach((t, i) => { vrow[t] = i; });
  const model = { m, lam, V, vrow, qaS: meta.qaS };
  same(model, kaol.makeData(meta.data, 50), { eta: 30, steps: 40 });
  same(model, kaol.makeData(meta.data, 7), { eta: 120, steps: 30 });
  same(model, kaol.makeData(meta.data, 20), { eta: 30, steps: 5, rank1: true });
});
