// Times web/kaol.js's fine-tuning of the chapter-4 live figure in node: the shipped book-scale
// checkpoint (web/data/finetune.*), as web/worker.js loads it, at the figure's settings.
//   node tests/js/bench.mjs [N_ft=75] [steps=200] [runs=5] [rank1=0]
// Prints each run's wall and CPU time, their minima and the load average (benchmarks/README.md).
// Not a test: `node --test tests/js/` does not run it.
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import * as kaol from '../../web/kaol.js';

const [N_ft = 75, steps = 200, runs = 5, rank1 = 0] = process.argv.slice(2).map(Number);
const meta = JSON.parse(readFileSync(new URL('../../web/data/finetune.json', import.meta.url)));
const buf = readFileSync(new URL('../../web/data/finetune.bin', import.meta.url));
const half = h => (h & 0x8000 ? -1 : 1) * (((h >> 10) & 0x1f) === 0 ? (h & 0x3ff) * 2 ** -24 : (1 + (h & 0x3ff) / 1024) * 2 ** (((h >> 10) & 0x1f) - 15));
const V0 = Float64Array.from(new Uint16Array(buf.buffer, buf.byteOffset, buf.byteLength / 2), half);
const { m, lam, T } = meta.model, vrow = new Int32Array(T).fill(-1);
meta.V_rows.forEach((t, i) => { vrow[t] = i; });
const load = () => loadavg().map(x => x.toFixed(2)).join(' ');
console.log(`N_ft = ${N_ft}, eta = 30, ${steps} steps, ${rank1 ? 'rank-1' : 'full'} updates; load average before: ${load()}`);
let wall = Infinity, cpu = Infinity, hist;
for (let r = 0; r < runs; r++) {
  const V = V0.slice(), t0 = performance.now(), c0 = process.cpuUsage();
  hist = kaol.finetune({ m, lam, V, vrow, qaS: meta.qaS }, kaol.makeData(meta.data, N_ft), { eta: 30, steps, rank1: !!rank1 });
  const w = performance.now() - t0, c = process.cpuUsage(c0), ms = (c.user + c.system) / 1000;
  wall = Math.min(wall, w); cpu = Math.min(cpu, ms);
  console.log(`run ${r + 1}: ${w.toFixed(0)} ms wall, ${ms.toFixed(0)} ms CPU`);
}
console.log(`min of ${runs}: ${wall.toFixed(0)} ms wall, ${cpu.toFixed(0)} ms CPU; final accuracy ${hist.accFreq.at(-1)} / ${hist.accRare.at(-1)}; load average after: ${load()}`);
