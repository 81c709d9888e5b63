// Runs web/kaol.js on the fixtures that `python -m kaol.web fixtures` exported from kaol and
// returns the largest absolute difference of every compared quantity. Shared by the node
// tests (tests/js/kaol.test.js) and the browser test (tests/browser/test_live.py).

function maxDiff(got, want, what) {
  if (got.length !== want.length) throw new Error(`${what}: ${got.length} values, kaol has ${want.length}`);
  let d = 0;
  for (let i = 0; i < want.length; i++) {
    const a = got[i], b = want[i];
    d = Math.max(d, (Number.isNaN(a) && Number.isNaN(b)) ? 0 : Math.abs(a - b));
  }
  return Number.isNaN(d) ? Infinity : d;
}

/** {quantity: max |JS - kaol|} for pre-training and for full and rank-1 fine-tuning. */
export function compare(kaol, fx) {
  const { m, lam, T } = fx.model, out = {};
  const data = kaol.makeData(fx.data);
  if (data.vocab.size !== T) throw new Error(`vocabulary of ${data.vocab.size} tokens, kaol has ${T}`);
  const params = { W: Float64Array.from(fx.init.W), V: Float64Array.from(fx.init.V) };
  const pt = fx.pretrain;
  const hist = kaol.pretrain(params, data, { m, lam }, pt.schedule, { logEvery: 1 });
  out['pretrain loss'] = maxDiff(hist.loss, pt.loss, 'pretrain loss');
  out['pretrain attention'] = maxDiff(hist.attn.flat(2), pt.attn.flat(2), 'pretrain attention');
  out['pretrain W'] = maxDiff(params.W, pt.W, 'pretrain W');
  out['pretrain V'] = maxDiff(params.V, pt.V, 'pretrain V');
  for (const [name, ft] of Object.entries(fx.finetune)) {
    const V = Float64Array.from(params.V), vrow = Int32Array.from({ length: T }, (_, t) => t);
    const h = kaol.finetune({ m, lam, V, vrow, W: params.W }, data, ft);
    out[`finetune ${name} loss`] = maxDiff(h.loss, ft.loss, `${name} loss`);
    out[`finetune ${name} acc_freq`] = maxDiff(h.accFreq, ft.acc_freq, `${name} acc_freq`);
    out[`finetune ${name} acc_rare`] = maxDiff(h.accRare, ft.acc_rare, `${name} acc_rare`);
    const rows = ft.rows.flatMap(t => [...V.subarray(t * m * T, (t + 1) * m * T)]);
    out[`finetune ${name} V rows`] = maxDiff(rows, ft.V_rows, `${name} V rows`);
  }
  return out;
}
