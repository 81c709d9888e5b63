// web/kaol.js against kaol: `node --test tests/js/` (scripts/test.sh). The fixtures are
// written by `python -m kaol.web fixtures`; tests/test_web.py checks they are current.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as kaol from '../../web/kaol.js';
import { compare } from './check.js';

const fx = JSON.parse(readFileSync(new URL('./fixtures.json', import.meta.url)));

test('pre-training and fine-tuning (full and rank-1) agree with kaol to 1e-9', () => {
  const diffs = compare(kaol, fx);
  for (const [what, d] of Object.entries(diffs)) assert.ok(d <= 1e-9, `${what}: |JS - kaol| = ${d}`);
  assert.equal(Object.keys(diffs).length, 12);
});

test('fine-tuning on the exported split: N_ft facts from the permutation, the others unseen', () => {
  const d = kaol.makeData(fx.data, 3);
  assert.deepEqual([...d.ft], fx.data.perm.slice(0, 3).sort((a, b) => a - b));
  assert.equal(d.nFreq, fx.data.N_f - 3);
  assert.equal(d.qaTest.n, fx.data.N_f - 3 + fx.data.N_r);
});

test('shapes are validated with clear errors', () => {
  assert.throws(() => kaol.makeData({ ...fx.data, perm: [0, 1] }), /data.perm has 2 values, expected 8/);
  const data = kaol.makeData(fx.data);
  assert.throws(() => kaol.pretrain({ W: new Float64Array(3), V: new Float64Array(3) }, data, { m: 4 }, fx.pretrain.schedule),
                /W has 3 values, expected 961/);
  assert.throws(() => kaol.finetune({ m: 4, V: new Float64Array(1), vrow: new Int32Array(31).fill(-1), qaS: [] }, data,
                                    { eta: 1, steps: 1 }), /V has no row for token/);
});

test('a diverging rate is reported, naming the step and the rate', () => {
  const data = kaol.makeData(fx.data);
  const params = { W: Float64Array.from(fx.init.W), V: Float64Array.from(fx.init.V) };
  assert.throws(() => kaol.pretrain(params, data, { m: 4 }, { eta: [1e6, 1e6, 1e6], T1: 0, T2: 0, T: 20 }),
                /diverged, lower that rate/);
});
