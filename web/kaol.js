// The simplified one-layer transformer of Xu and Chen (2025), Sec. 2, trained in the browser.
//
// The same model and the same updates as the Python package `kaol` (kaol/fast.py,
// kaol/train.py), in float64, with no dependency: tests/js/ checks that losses,
// parameters and accuracies agree with kaol to 1e-9 on exported fixtures.
//
// Token basis (Sec. 3): token t is rho_t e_t (rho_c for the context token c, 1 otherwise),
// so an input of 2-3 tokens reads only 2-3 rows of V, each of m x T values.
//   S = softmax_l(W[t_l, t_L] rho_l rho_L)      a_l = S_l rho_l
//   pre[n, j] = sum_l a_l V[t_l, n, j]          z_j = lam sum_n ReLU(pre[n, j])
// Loss: weighted mean cross-entropy against each row's target distribution (App. J).
// Gradients: the explicit form of Lemma 1 (kaol/fast.py), with g_j = lam w (p_j - y_j):
//   dL/dV[t_l, n, j] = sum_i a_l g_j 1[pre_nj > 0]
//   dL/da_l = sum_{n,j} g_j 1[pre_nj > 0] V[t_l, n, j],  dL/dS_l = rho_l dL/da_l
//   dL/dW[t_l, t_L] = sum_i S_l (dL/dS_l - sum_k S_k dL/dS_k) rho_l rho_L

export const CTX_FREQ = 0, CTX_RARE = 1, ANS_FREQ = 2, ANS_RARE = 3, QA = 4;
export const DIVERGED = 100;   // a loss above 100x its initial value has diverged (kaol.train.DIVERGED)

function fail(msg) { throw new Error(`kaol.js: ${msg}`); }

/** Check that `arr` holds `n` numbers; name it in the error. */
export function expectLength(name, arr, n) {
  if (!arr || typeof arr.length !== 'number') fail(`${name} is missing`);
  if (arr.length !== n) fail(`${name} has ${arr.length} values, expected ${n}`);
  return arr;
}

/** Token ids of the vocabulary (Sec. 3, kaol.data.Vocab): c, s_i, a_i, r_k, q. */
export function vocab(N, R, context = true) {
  const off = context ? 1 : 0;
  return { N, R, context, c: context ? 0 : -1, s: i => off + i, a: i => off + N + i,
           r: k => off + 2 * N + k, q: off + 2 * N + R, size: off + 2 * N + R + 1 };
}

/** One draw of the Sec. 3 data from its exported description (kaol.web.data_json): the facts'
 *  phrase sets and the permutation of the frequent facts whose first `N_ft` are fine-tuned on,
 *  as kaol.data.make_data does. The RNG stays in Python; this only rebuilds the samples. */
export function makeData(d, N_ft = d.N_ft, rho_c = d.rho_c) {
  for (const k of ['N_f', 'N_r', 'R', 'K']) if (!Number.isInteger(d[k]) || d[k] < 0) fail(`data.${k} = ${d[k]} is not a count`);
  const N = d.N_f + d.N_r, v = vocab(N, d.R, d.context !== false);
  expectLength('data.phrases', d.phrases, N);
  expectLength('data.perm', d.perm, d.N_f);
  if (!(N_ft >= 0 && N_ft <= d.N_f)) fail(`N_ft = ${N_ft} must lie in [0, N_f = ${d.N_f}]`);
  const rho = new Float64Array(v.size).fill(1);
  if (v.context) rho[v.c] = rho_c;
  const wRare = d.rare_weight == null ? d.K : d.rare_weight;
  const sorted = a => Int32Array.from(a).sort();
  const ft = sorted(d.perm.slice(0, N_ft)), unseen = sorted(d.perm.slice(N_ft));
  const rare = Int32Array.from({ length: d.N_r }, (_, i) => d.N_f + i);
  const pre = v.context ? [v.c] : [];
  const rows = [];
  d.phrases.forEach((ks, i) => {
    const freq = i < d.N_f, w = freq ? 1 : wRare;
    rows.push({ tok: [...pre, v.s(i)], y: ks.map(k => [v.r(k), 1 / ks.length]), w: w * ks.length,
                kind: freq ? CTX_FREQ : CTX_RARE, fact: i });
    for (const k of ks) rows.push({ tok: [...pre, v.s(i), v.r(k)], y: [[v.a(i), 1]], w, kind: freq ? ANS_FREQ : ANS_RARE, fact: i });
  });
  const qa = facts => samples([...facts].map(i => ({ tok: [v.s(i), v.q], y: [[v.a(i), 1]], w: 1, kind: QA, fact: i })), v.size);
  return { cfg: d, vocab: v, rho, wRare, N_ft, ft, unseen, rare, pretrain: samples(rows, v.size),
           qaTrain: qa(ft), qaTest: qa([...unseen, ...rare]), nFreq: unseen.length, nRare: d.N_r };
}

/** Pack rows {tok, y: [[token, prob]], w, kind, fact} into flat arrays; weights are divided by
 *  their sum (the weighted mean of App. J). `used` lists the tokens read (the rows of V with a
 *  gradient) and `slot[t]` is the position of token t in it, -1 for the others. */
export function samples(rows, T) {
  const n = rows.length, L = Math.max(...rows.map(r => r.tok.length));
  const tok = new Int32Array(n * L), len = new Int32Array(n), yStart = new Int32Array(n + 1);
  const w = new Float64Array(n), kind = new Int32Array(n), fact = new Int32Array(n);
  const yIdx = [], yProb = [];
  let total = 0;
  for (const r of rows) total += r.w;
  const slot = new Int32Array(T).fill(-1), used = [];
  rows.forEach((r, i) => {
    len[i] = r.tok.length;
    r.tok.forEach((t, l) => {
      tok[i * L + l] = t;
      if (slot[t] < 0) { slot[t] = used.length; used.push(t); }
    });
    for (const [t, p] of r.y) { yIdx.push(t); yProb.push(p); }
    yStart[i + 1] = yIdx.length;
    w[i] = r.w / total; kind[i] = r.kind; fact[i] = r.fact;
  });
  return { n, L, tok, len, w, kind, fact, yStart, yIdx: Int32Array.from(yIdx), yProb: Float64Array.from(yProb),
           slot, used: Int32Array.from(used) };
}

/** Attention of the last token, S = softmax(X^T W x_L) (Sec. 2), for every row: (n, L), 0 past a row's length. */
export function attention(W, T, rows, rho) {
  const { n, L, tok, len } = rows, S = new Float64Array(n * L);
  for (let i = 0; i < n; i++) {
    const o = i * L, ln = len[i], tL = tok[o + ln - 1];
    let mx = -Infinity;
    for (let l = 0; l < ln; l++) {
      const t = tok[o + l];
      S[o + l] = W[t * T + tL] * rho[t] * rho[tL];
      mx = Math.max(mx, S[o + l]);
    }
    let sum = 0;
    for (let l = 0; l < ln; l++) { S[o + l] = Math.exp(S[o + l] - mx); sum += S[o + l]; }
    for (let l = 0; l < ln; l++) S[o + l] /= sum;
  }
  return S;
}

/** One pass over `rows` (kaol.fast.run): the loss, each row's cross-entropy and argmax and,
 *  with `grad`, Lemma 1's gradient of the rows of V the inputs read (`gV`, one m x T block per
 *  token of `rows.used`) and, with `gradA`, dL/da of every token of every row; `loss: false`
 *  gives the argmax only. V is stored by rows: token t's m x T block starts at vrow[t] * m * T.
 *  Inputs have 1-3 tokens; each loop over the m x T block does all of a row's tokens at once. */
export function run(V, vrow, T, m, lam, rows, a, { grad = false, gradA = false, loss: withLoss = true } = {}) {
  const { n, L, tok, len, w, yStart, yIdx, yProb, slot } = rows, mT = m * T;
  const pre = new Float64Array(mT), z = new Float64Array(T), g = new Float64Array(T);
  const ce = new Float64Array(n), pred = new Int32Array(n);
  const gV = grad ? new Float64Array(rows.used.length * mT) : null;
  const da = gradA ? new Float64Array(n * L) : null;
  let loss = 0;
  for (let i = 0; i < n; i++) {
    const o = i * L, three = len[i] === 3;
    if (len[i] < 1 || len[i] > 3) fail(`row ${i} has ${len[i]} tokens; inputs have 1 to 3`);
    // A missing second or third token reads the first token's row with weight 0.
    const a0 = a[o], a1 = len[i] > 1 ? a[o + 1] : 0, a2 = three ? a[o + 2] : 0;
    const v0 = vrow[tok[o]] * mT, v1 = len[i] > 1 ? vrow[tok[o + 1]] * mT : v0, v2 = three ? vrow[tok[o + 2]] * mT : v0;
    z.fill(0);
    for (let q = 0, k = 0; q < m; q++) for (let j = 0; j < T; j++, k++) {   // pre = sum_l a_l V[t_l]; z = sum_n ReLU(pre)
      const p = three ? a0 * V[v0 + k] + a1 * V[v1 + k] + a2 * V[v2 + k] : a0 * V[v0 + k] + a1 * V[v1 + k];
      pre[k] = p;
      if (p > 0) z[j] += p;
    }
    let mx = -Infinity, arg = 0;
    for (let j = 0; j < T; j++) { z[j] *= lam; if (z[j] > mx) { mx = z[j]; arg = j; } }
    pred[i] = arg;
    if (!withLoss) continue;
    let se = 0;
    for (let j = 0; j < T; j++) { g[j] = Math.exp(z[j] - mx); se += g[j]; }
    const lse = mx + Math.log(se);
    let c = 0;
    for (let k = yStart[i]; k < yStart[i + 1]; k++) c -= yProb[k] * (z[yIdx[k]] - lse);
    ce[i] = c;
    loss += w[i] * c;
    if (!grad) continue;
    for (let j = 0; j < T; j++) g[j] /= se;                                  // p
    for (let k = yStart[i]; k < yStart[i + 1]; k++) g[yIdx[k]] -= yProb[k];  // p - y
    for (let j = 0; j < T; j++) g[j] *= lam * w[i];
    // dL/dV[t_l] += a_l g_j 1[pre > 0]; dL/da_l = sum g_j 1[pre > 0] V[t_l]
    const g0 = slot[tok[o]] * mT, g1 = len[i] > 1 ? slot[tok[o + 1]] * mT : g0, g2 = three ? slot[tok[o + 2]] * mT : g0;
    let d0 = 0, d1 = 0, d2 = 0;
    for (let q = 0, k = 0; q < m; q++) for (let j = 0; j < T; j++, k++) {
      if (!(pre[k] > 0)) continue;
      const gj = g[j];
      gV[g0 + k] += a0 * gj;
      gV[g1 + k] += a1 * gj;     // a1 = 0 when a 1-token input reads row 0 twice
      if (three) gV[g2 + k] += a2 * gj;
      if (gradA) { d0 += gj * V[v0 + k]; d1 += gj * V[v1 + k]; if (three) d2 += gj * V[v2 + k]; }
    }
    if (gradA) {            // kaol.fast leaves dL/da of a token with a_l = 0 at 0
      da[o] = a0 === 0 ? 0 : d0;
      if (len[i] > 1) da[o + 1] = a1 === 0 ? 0 : d1;
      if (three) da[o + 2] = a2 === 0 ? 0 : d2;
    }
  }
  return { loss, ce, pred, gV, da };
}

/** dL/dW from dL/da (the attention part of Lemma 1; kaol.fast.run). */
function gradW(T, rows, S, rho, da) {
  const { n, L, tok, len } = rows, gW = new Float64Array(T * T);
  for (let i = 0; i < n; i++) {
    const o = i * L, ln = len[i], tL = tok[o + ln - 1];
    let sdS = 0;
    for (let l = 0; l < ln; l++) sdS += S[o + l] * da[o + l] * rho[tok[o + l]];
    for (let l = 0; l < ln; l++) {
      const t = tok[o + l], dS = da[o + l] * rho[t];
      gW[t * T + tL] += S[o + l] * (dS - sdS) * rho[t] * rho[tL];
    }
  }
  return gW;
}

/** a_l = S_l rho_l of every token of every row. */
function weights(S, rows, rho) {
  const a = new Float64Array(S.length);
  for (let i = 0; i < rows.n; i++) for (let l = 0; l < rows.len[i]; l++) a[i * rows.L + l] = S[i * rows.L + l] * rho[rows.tok[i * rows.L + l]];
  return a;
}

/** The three-stage learning rate of Sec. 4 (kaol.train.Schedule): eta[0] before T1, eta[1] before T2, eta[2] after. */
export function rate(schedule, t) {
  return schedule.eta[t < schedule.T1 ? 0 : t < schedule.T2 ? 1 : 2];
}

function checkLoss(loss, start, t, what, eta) {
  if (!(loss <= DIVERGED * start)) fail(`${what} loss became ${loss.toPrecision(4)} at step ${t} with learning rate ${eta}: the run diverged, lower that rate`);
}

/** Mean attention on the c, s, r tokens of the (c, s) rows and of the (c, s, r) rows (Prop. 1;
 *  kaol.metrics.attention_mass): [[c, s, r], [c, s, r]]. */
export function attentionMass(S, rows, v) {
  const out = [[0, 0, 0], [0, 0, 0]], cnt = [0, 0];
  const code = t => (v.context && t === v.c) ? 0 : t < v.a(0) ? 1 : (t >= v.r(0) && t < v.q) ? 2 : 3;
  for (let i = 0; i < rows.n; i++) {
    const k = rows.kind[i], row = (k === CTX_FREQ || k === CTX_RARE) ? 0 : (k === ANS_FREQ || k === ANS_RARE) ? 1 : -1;
    if (row < 0) continue;
    cnt[row]++;
    for (let l = 0; l < rows.len[i]; l++) {
      const c = code(rows.tok[i * rows.L + l]);
      if (c < 3) out[row][c] += S[i * rows.L + l];
    }
  }
  return out.map((r, i) => r.map(x => x / Math.max(cnt[i], 1)));
}

/** Pre-training (kaol.train.pretrain): full-batch gradient descent on W and V with the
 *  three-stage schedule of Sec. 4. `params` {W (T*T), V (T*m*T)} are updated in place;
 *  `onLog({step, loss, attn})` is called every `logEvery` steps and at the last. */
export function pretrain(params, data, { m, lam = 1 }, schedule, { logEvery = 10, onLog = () => {} } = {}) {
  const T = data.vocab.size, rows = data.pretrain, rho = data.rho;
  const { W, V } = params;
  expectLength('W', W, T * T);
  expectLength('V', V, T * m * T);
  const vrow = Int32Array.from({ length: T }, (_, t) => t), mT = m * T;
  const hist = { steps: [], loss: [], attn: [] };
  let start = 0;
  for (let t = 0; t <= schedule.T; t++) {
    const S = attention(W, T, rows, rho), grad = t < schedule.T;
    const out = run(V, vrow, T, m, lam, rows, weights(S, rows, rho), { grad, gradA: grad });
    if (t === 0) start = out.loss;
    const last = Math.max(t - 1, 0);
    checkLoss(out.loss, start, t, `pre-training (Stage ${last < schedule.T1 ? 1 : last < schedule.T2 ? 2 : 3})`, rate(schedule, last));
    if (t % logEvery === 0 || t === schedule.T) {
      const rec = { step: t, loss: out.loss, attn: attentionMass(S, rows, data.vocab) };
      hist.steps.push(t); hist.loss.push(rec.loss); hist.attn.push(rec.attn);
      onLog(rec);
    }
    if (!grad) break;
    const eta = rate(schedule, t), gW = gradW(T, rows, S, rho, out.da);
    for (let k = 0; k < T * T; k++) W[k] -= eta * gW[k];
    rows.used.forEach((tok, u) => {
      for (let k = 0; k < mT; k++) V[tok * mT + k] -= eta * out.gV[u * mT + k];
    });
  }
  return hist;
}

/** Eigenvector of the largest eigenvalue of the symmetric n x n matrix K, by cyclic Jacobi rotations
 *  (Golub and Van Loan, Sec. 8.5): as accurate as a library eigensolver, and deterministic.
 *  Sweeps stop when the off-diagonal part is below 1e-32 of the whole (squared Frobenius norms)
 *  or, below 1e-28, when a sweep no longer reduces it: it has reached the rounding floor, where
 *  more sweeps (up to 50) rotate by angles too small to change the eigenvector (tests/js). */
export function topEigenvector(K, n) {
  const A = Float64Array.from(K), Q = new Float64Array(n * n);     // Q transposed: Q[i n + k] = Q_ki
  for (let i = 0; i < n; i++) Q[i * n + i] = 1;
  for (let sweep = 0, last = Infinity; sweep < 50; sweep++) {
    let off = 0, all = 0;
    for (let i = 0; i < n * n; i++) { all += A[i] * A[i]; if (i % (n + 1)) off += A[i] * A[i]; }
    if (off <= 1e-32 * all || (off <= 1e-28 * all && off >= last)) break;
    last = off;
    for (let p = 0; p < n - 1; p++) for (let q = p + 1; q < n; q++) {
      const apq = A[p * n + q];
      if (apq === 0) continue;
      const theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
      const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
      const c = 1 / Math.sqrt(t * t + 1), s = t * c;
      for (let k = 0, kp = p, kq = q; k < n; k++, kp += n, kq += n) {   // A <- A J (columns p, q)
        const x = A[kp], y = A[kq];
        A[kp] = c * x - s * y; A[kq] = s * x + c * y;
      }
      for (let k = 0, pk = p * n, qk = q * n; k < n; k++, pk++, qk++) {   // Q <- Q J
        const u = Q[pk], v = Q[qk];
        Q[pk] = c * u - s * v; Q[qk] = s * u + c * v;
      }
      for (let k = 0; k < n; k++) {           // A <- J^T A (rows p, q)
        const pk = p * n + k, qk = q * n + k;
        const x = A[pk], y = A[qk];
        A[pk] = c * x - s * y; A[qk] = s * x + c * y;
      }
    }
  }
  let top = 0;
  for (let i = 1; i < n; i++) if (A[i * n + i] > A[top * n + top]) top = i;
  return Q.slice(top * n, top * n + n);
}

let nzCol = new Int32Array(0), nzVal = new Float64Array(0);       // rank1's work space, reused

/** Best rank-1 approximation sigma_1 u_1 v_1^T of the gradient M (rows x cols), in place (App. H;
 *  kaol.metrics.rank1): u_1 is the top eigenvector of the Gram matrix M M^T and the
 *  approximation is u_1 u_1^T M. */
export function rank1(M, rows, cols) {
  // K sums, in column order, only the products whose first factor is not 0 (adding a 0 product
  // changes no sum: a sum from +0 is never -0), from each row's list of non-zero columns.
  if (nzCol.length < rows * cols) { nzCol = new Int32Array(rows * cols); nzVal = new Float64Array(rows * cols); }
  const start = new Int32Array(rows + 1);
  for (let i = 0, nnz = 0; i < rows; i++) {
    for (let c = 0, o = i * cols; c < cols; c++) { const v = M[o + c]; nzCol[nnz] = c; nzVal[nnz] = v; nnz += (v !== 0) | 0; }
    start[i + 1] = nnz;
  }
  const K = new Float64Array(rows * rows);
  for (let i = 0; i < rows; i++) {
    const l0 = start[i], l1 = start[i + 1];
    let k = 0;
    for (; k + 3 <= i; k += 4) {                 // four sums at a time, each in column order
      const o0 = k * cols, o1 = o0 + cols, o2 = o1 + cols, o3 = o2 + cols;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let l = l0; l < l1; l++) {
        const v = nzVal[l], c = nzCol[l];
        s0 += v * M[o0 + c]; s1 += v * M[o1 + c]; s2 += v * M[o2 + c]; s3 += v * M[o3 + c];
      }
      K[i * rows + k] = K[k * rows + i] = s0; K[i * rows + k + 1] = K[(k + 1) * rows + i] = s1;
      K[i * rows + k + 2] = K[(k + 2) * rows + i] = s2; K[i * rows + k + 3] = K[(k + 3) * rows + i] = s3;
    }
    for (; k <= i; k++) {
      let s = 0;
      for (let l = l0, ok = k * cols; l < l1; l++) s += nzVal[l] * M[ok + nzCol[l]];
      K[i * rows + k] = K[k * rows + i] = s;
    }
  }
  const u = topEigenvector(K, rows), uM = new Float64Array(cols);      // uM = u^T M, as K
  for (let i = 0; i < rows; i++) for (let l = start[i], e = start[i + 1]; l < e; l++) uM[nzCol[l]] += u[i] * nzVal[l];
  for (let i = 0; i < rows; i++) for (let c = 0; c < cols; c++) M[i * cols + c] = u[i] * uM[c];
}

/** z = lam sum_n ReLU(b0 X[s0] + b1 X[xq]) of test row r0 and that of row r1 (weights c0, c1,
 *  subject block s1) of fine-tuning, into zs[r T ..]: the rows share the block of q at `xq` of
 *  X (each block stored transposed: k = j m + n). Writes their argmaxes to am[r0], am[r1] and
 *  their maxima to top[r0], top[r1]. */
function argmaxTwo(X, xq, m, T, lam, r0, s0, b0, b1, r1, s1, c0, c1, zs, am, top) {
  let mx = -Infinity, arg = 0, mx2 = -Infinity, arg2 = 0;
  for (let j = 0, k = 0, o0 = r0 * T, o1 = r1 * T; j < T; j++) {
    let u = 0, w = 0;
    for (const e = k + m; k < e; k++) {     // ReLU(p) = (p + |p|) / 2, exactly
      const vq = X[xq + k], p = b0 * X[s0 + k] + b1 * vq, r = c0 * X[s1 + k] + c1 * vq;
      u += (p + Math.abs(p)) * 0.5;
      w += (r + Math.abs(r)) * 0.5;
    }
    const zu = u * lam, zw = w * lam;
    zs[o0 + j] = zu; zs[o1 + j] = zw;
    if (zu > mx) { mx = zu; arg = j; }
    if (zw > mx2) { mx2 = zw; arg2 = j; }
  }
  am[r0] = arg; am[r1] = arg2; top[r0] = mx; top[r1] = mx2;
}

/** Whether the argmax am[r] of test row r, found at step t0 from z = zs[r T ..] (all >= 0,
 *  largest top[r], second largest next[r]), is still its argmax: only V[q] has changed since
 *  (the test subjects are not fine-tuned), and ReLU is 1-Lipschitz, so z_j has moved by at most
 *  b sum_n |change of V[q]_nj| <= b (drift[now + j] - drift[then + j]), b = lam a_q, itself at
 *  most b (reach[now] - reach[t0]) (reach: the sums over the steps of the largest change of
 *  any j). The margin 1e-9 (1 + top[r]) is far above the rounding of z; within it the row is
 *  recomputed. */
function stillArgmax(zs, r, am, top, next, T, b, drift, reach, t0, now) {
  const o = r * T, a = am[r], bb = b * (1 + 1e-9), then = t0 * T, at = now * T, tol = 1e-9 * (1 + top[r]);
  if (next[r] + 2 * bb * (reach[now] - reach[t0]) < top[r] - tol) return true;
  const lo = zs[o + a] - bb * (drift[at + a] - drift[then + a]) - tol;
  for (let j = 0; j < T; j++) if (j !== a && zs[o + j] + bb * (drift[at + j] - drift[then + j]) >= lo) return false;
  return true;
}

/** z = lam sum_n ReLU(a0 X[xs] + a1 X[xq]) of fine-tuning row i into z0 and that of row i + 1
 *  (b0, b1, xt) into z1, two at a time as they share X[xq]; the positions k of their positive
 *  pre-activations are listed in p0 and p1, the counts in p0[mT] and p1[mT]; their maxima go
 *  to mx[0] and mx[1]. */
function forwardTwo(X, xq, m, T, lam, xs, a0, a1, xt, b0, b1, z0, z1, p0, p1, mx) {
  let m0 = -Infinity, m1 = -Infinity, c0 = 0, c1 = 0;
  for (let j = 0, k = 0; j < T; j++) {
    let u = 0, w = 0;
    for (const e = k + m; k < e; k++) {
      const vq = X[xq + k], p = a0 * X[xs + k] + a1 * vq, r = b0 * X[xt + k] + b1 * vq;
      p0[c0] = k; c0 += (p > 0) | 0;
      p1[c1] = k; c1 += (r > 0) | 0;
      u += (p + Math.abs(p)) * 0.5;
      w += (r + Math.abs(r)) * 0.5;
    }
    const zu = u * lam, zw = w * lam;
    z0[j] = zu; z1[j] = zw;
    if (zu > m0) m0 = zu;
    if (zw > m1) m1 = zw;
  }
  p0[m * T] = c0; p1[m * T] = c1; mx[0] = m0; mx[1] = m1;
}

/** Cross-entropy of row i of `rows` from its z (max mx); also g = lam w_i (p - y). */
function crossEntropy(rows, i, z, mx, T, lam, g) {
  let se = 0;
  const e0 = Math.exp(0 - mx);          // most z_j are 0 (no positive pre-activation)
  for (let j = 0; j < T; j++) { const zj = z[j]; g[j] = zj === 0 ? e0 : Math.exp(zj - mx); se += g[j]; }
  const lse = mx + Math.log(se), y0 = rows.yStart[i], y1 = rows.yStart[i + 1];
  let c = 0;
  for (let k = y0; k < y1; k++) c -= rows.yProb[k] * (z[rows.yIdx[k]] - lse);
  for (let j = 0; j < T; j++) g[j] /= se;                                  // p
  for (let k = y0; k < y1; k++) g[rows.yIdx[k]] -= rows.yProb[k];        // p - y
  const lw = lam * rows.w[i];
  for (let j = 0; j < T; j++) g[j] *= lw;
  return c;
}

/** Full update of one fine-tuning row: V[s] -= eta a0 g_j 1[pre > 0] now (only this row reads
 *  V[s]) and gq += a1 g_j 1[pre > 0] (q's gradient, applied after the last row); pos lists the
 *  positive pre-activations (forwardTwo), jOf[k] = j. */
function descendRow(X, xs, a0, a1, eta, T, pos, jOf, g, hs, hq, gq) {
  for (let j = 0; j < T; j++) { hs[j] = eta * (a0 * g[j]); hq[j] = a1 * g[j]; }
  for (let c = 0, n = pos[pos.length - 1]; c < n; c++) {
    const k = pos[c], j = jOf[k];
    X[xs + k] -= hs[j];
    gq[k] += hq[j];
  }
}

/** Rank-1 updates: the row's gradient on V[s] into gV at `os` in V's layout (k = n T + j), and gq as above. */
function gradientRow(gV, os, a0, a1, m, T, pos, jOf, g, gq) {
  for (let c = 0, n = pos[pos.length - 1]; c < n; c++) {
    const k = pos[c], j = jOf[k];
    gV[os + (k - j * m) * T + j] = a0 * g[j];
    gq[k] += a1 * g[j];
  }
}

/** Fine-tuning (kaol.train.finetune): full-batch gradient descent on V only, W fixed (Lemma 17),
 *  on the Q&A rows (s_i, q) -> a_i of the fine-tuned facts; with `rank1` each step applies the
 *  best rank-1 approximation of the gradient (App. H). `model` holds V by rows ({V, vrow}: only
 *  the rows of the subjects and of q are needed) and either W or, per fact, the attention
 *  (S_s, S_q) of its (s_i, q) input (`qaS`, 2 N values). V is updated in place.
 *  Returns, for steps 0..steps, the loss and the OOD accuracy on unseen frequent and rare facts.
 *
 *  The arithmetic of `run` on these rows, in the same order, so the same numbers to the bit
 *  (tests/js, benchmarks/README.md); what a step does not change is not redone:
 *  - W is fixed, so the weights a = (S_s rho_s, S_q rho_q) of every row are computed once.
 *  - Every input is (s_i, q) and a fine-tuned subject s_i is read by its own row only, so with
 *    full updates a step updates V[s_i] as soon as its row's gradient is known, at the positive
 *    pre-activations only, and sums only q's gradient over the rows.
 *  - The test subjects are never fine-tuned: between steps a test row's z moves only with
 *    V[q], by a bounded amount, so its argmax is recomputed only when the bound no longer
 *    proves it unchanged (stillArgmax).
 *  - The blocks read are copied once into `X`, each token's m x T block transposed (T x m),
 *    so that z_j sums m adjacent values, and copied back into V at the end. */
export function finetune(model, data, { eta, steps, rank1: lowRank = false }, { onStep = () => {} } = {}) {
  const { m, lam = 1, V, vrow } = model, T = data.vocab.size, mT = m * T, N = data.vocab.N, q = data.vocab.q;
  if (!(eta > 0) || !(steps > 0)) fail(`fine-tuning needs eta > 0 and steps > 0, got eta=${eta}, steps=${steps}`);
  if (data.N_ft === 0) fail('N_ft = 0: there is nothing to fine-tune on; set N_ft >= 1');
  expectLength('vrow', vrow, T);
  const qaAttention = rows => {
    if (model.W) return attention(expectLength('W', model.W, T * T), T, rows, data.rho);
    expectLength('qaS', model.qaS, 2 * N);
    const S = new Float64Array(rows.n * 2);
    for (let i = 0; i < rows.n; i++) { S[2 * i] = model.qaS[2 * rows.fact[i]]; S[2 * i + 1] = model.qaS[2 * rows.fact[i] + 1]; }
    return S;
  };
  const train = data.qaTrain, test = data.qaTest;
  for (const rows of [train, test]) for (const t of rows.used) if (vrow[t] < 0) fail(`V has no row for token ${t}`);
  const tuned = new Uint8Array(T);      // every row is (s, q); each fine-tuned subject has one row
  for (const rows of [train, test]) for (let i = 0; i < rows.n; i++) {
    const s = rows.tok[i * rows.L];
    if (rows.len[i] !== 2 || rows.tok[i * rows.L + 1] !== q || s === q) fail(`Q&A row ${i} is not (s, q)`);
    if (rows === train && tuned[s]++) fail(`subject ${s} is fine-tuned on twice`);
  }

  const toks = Int32Array.from(new Set([q, ...train.used, ...test.used]));
  const X = new Float64Array(toks.length * mT), xrow = new Int32Array(T).fill(-1);
  toks.forEach((t, r) => {
    xrow[t] = r;
    for (let n = 0, o = vrow[t] * mT, x = r * mT; n < m; n++) for (let j = 0; j < T; j++) X[x + j * m + n] = V[o + n * T + j];
  });
  const blocks = rows => {      // per row: where its subject's block starts in X, a_s, a_q
    const a = weights(qaAttention(rows), rows, data.rho);
    const xs = new Int32Array(rows.n), a0 = new Float64Array(rows.n), a1 = new Float64Array(rows.n);
    for (let i = 0; i < rows.n; i++) { xs[i] = xrow[rows.tok[i * rows.L]] * mT; a0[i] = a[i * rows.L]; a1[i] = a[i * rows.L + 1]; }
    return { xs, a0, a1 };
  };
  const tr = blocks(train), te = blocks(test), xq = xrow[q] * mT, used = train.used;
  const answer = Int32Array.from(test.fact, f => data.vocab.a(f));

  // Test rows: z (zs), its argmax (am), largest and second largest z (zTop, zNext), the step it
  // was computed at (since, -1: to compute); drift[t T + j] = sum over the steps before t of
  // sum_n |change of V[q]_nj|, reach[t] = sum over the steps before t of the largest of these.
  // The bound needs z >= 0 (lam >= 0) and test subjects that are not fine-tuned.
  const zs = new Float64Array(test.n * T), am = new Int32Array(test.n), zTop = new Float64Array(test.n), zNext = new Float64Array(test.n);
  const since = new Int32Array(test.n).fill(-1), todo = new Int32Array(test.n);
  const drift = new Float64Array((steps + 1) * T), reach = new Float64Array(steps + 1), qOld = new Float64Array(mT);
  let bound = lam >= 0;
  for (let r = 0; r < test.n; r++) if (tuned[test.tok[r * test.L]]) bound = false;
  // Fine-tuned rows, two at a time: z, the positive pre-activations (pos: k = j m + n, count at
  // [mT]; jOf[k] = j), g = lam w (p - y), and the gradient of V[q] (gq, X's layout) or, for
  // rank-1 updates, the whole gradient (gV, rows of `used` in V's layout).
  const z = [new Float64Array(T), new Float64Array(T)], pos = [new Int32Array(mT + 1), new Int32Array(mT + 1)];
  const mxs = new Float64Array(2), jOf = Int32Array.from({ length: mT }, (_, k) => Math.floor(k / m));
  const g = new Float64Array(T), hs = new Float64Array(T), hq = new Float64Array(T), gq = new Float64Array(mT);
  const gV = lowRank ? new Float64Array(used.length * mT) : null;
  const hist = { loss: [], accFreq: [], accRare: [] };
  let start = 0;
  try {
    for (let t = 0; t <= steps; t++) {
      let nTodo = 0, hf = 0, hr = 0;
      for (let r = 0; r < test.n; r++)
        if (since[r] < 0 || !stillArgmax(zs, r, am, zTop, zNext, T, lam * te.a1[r], drift, reach, since[r], t)) todo[nTodo++] = r;
      for (let c = 0; c < nTodo; c += 2) {
        const r0 = todo[c], r1 = todo[Math.min(c + 1, nTodo - 1)];
        argmaxTwo(X, xq, m, T, lam, r0, te.xs[r0], te.a0[r0], te.a1[r0], r1, te.xs[r1], te.a0[r1], te.a1[r1], zs, am, zTop);
      }
      for (let c = 0; c < nTodo; c++) {
        const r = todo[c];
        let second = -Infinity;
        for (let j = 0, o = r * T; j < T; j++) if (j !== am[r]) second = Math.max(second, zs[o + j]);
        zNext[r] = second;
        since[r] = bound ? t : -1;
      }
      for (let r = 0; r < test.n; r++) {
        const hit = am[r] === answer[r] ? 1 : 0;
        if (r < data.nFreq) hf += hit; else hr += hit;
      }
      hist.accFreq.push(data.nFreq ? hf / data.nFreq : NaN);
      hist.accRare.push(data.nRare ? hr / data.nRare : NaN);

      const grad = t < steps;
      let loss = 0;
      if (gV) gV.fill(0);
      for (let i = 0; i < train.n; i += 2) {
        const i1 = Math.min(i + 1, train.n - 1);
        forwardTwo(X, xq, m, T, lam, tr.xs[i], tr.a0[i], tr.a1[i], tr.xs[i1], tr.a0[i1], tr.a1[i1], z[0], z[1], pos[0], pos[1], mxs);
        for (let r = i; r <= i1; r++) {
          loss += train.w[r] * crossEntropy(train, r, z[r - i], mxs[r - i], T, lam, g);
          if (!grad) continue;
          if (!gV) descendRow(X, tr.xs[r], tr.a0[r], tr.a1[r], eta, T, pos[r - i], jOf, g, hs, hq, gq);
          else gradientRow(gV, train.slot[train.tok[r * train.L]] * mT, tr.a0[r], tr.a1[r], m, T, pos[r - i], jOf, g, gq);
        }
      }
      if (t === 0) start = loss;
      checkLoss(loss, start, t, 'fine-tuning', eta);
      hist.loss.push(loss);
      onStep(t, hist);
      if (!grad) break;

      qOld.set(X.subarray(xq, xq + mT));
      if (!gV) {
        for (let k = 0; k < mT; k++) X[xq + k] -= eta * gq[k];
      } else {
        const oq = train.slot[q] * mT;
        for (let n = 0; n < m; n++) for (let j = 0; j < T; j++) gV[oq + n * T + j] = gq[j * m + n];
        rank1(gV, used.length, mT);
        for (let u = 0; u < used.length; u++) {
          const x = xrow[used[u]] * mT, o = u * mT;
          for (let n = 0; n < m; n++) for (let j = 0; j < T; j++) X[x + j * m + n] -= eta * gV[o + n * T + j];
        }
      }
      gq.fill(0);
      let most = 0;
      for (let j = 0, k = 0; j < T; j++) {
        let d = 0;
        for (const e = k + m; k < e; k++) d += Math.abs(X[xq + k] - qOld[k]);
        drift[(t + 1) * T + j] = drift[t * T + j] + d;
        most = Math.max(most, d);
      }
      reach[t + 1] = reach[t] + most;
    }
  } finally {               // V <- the fine-tuned blocks
    for (const t of used) {
      const o = vrow[t] * mT, x = xrow[t] * mT;
      for (let n = 0; n < m; n++) for (let j = 0; j < T; j++) V[o + n * T + j] = X[x + j * m + n];
    }
  }
  return hist;
}

/** Minimum pre-training loss H_w (Sec. 3, App. J; kaol.data.entropy). */
export function entropy(d) {
  const w = d.rare_weight == null ? d.K : d.rare_weight;
  return d.N_f * d.K * Math.log(d.K) / (2 * (d.N_f * d.K + w * d.N_r));
}
