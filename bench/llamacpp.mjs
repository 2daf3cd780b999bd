// bench/llamacpp.mjs - llama.cpp's prompt processing on a GGUF file, through the prebuilt
// llama.cpp of the npm package node-llama-cpp (bench.py installs it, pinned, with
// `npm install --ignore-scripts`: no postinstall step, so nothing is downloaded or built).
//
//   node bench/llamacpp.mjs MODEL.gguf THREADS N1 [N2 ...] [tgM ...]
//
// For each prompt length N: a fresh context, one warm-up evaluation, then the best of two
// timed evaluations of N token ids (no generation). For each tgM (llama-bench's tg128 is
// tg128): generation, M tokens decoded one at a time into a fresh context (one llama_decode
// of one token each, as llama-bench's tg test does; the ids are given, not sampled, so a
// random model's EOS cannot cut it short), after a warm-up of 16; the best of two runs. Prints one JSON line per N, then the
// CPU backend llama.cpp chose (from its log). build: "never" and skipDownload: a missing
// binary is an error here, never a download or a compiler run.
import {getLlama} from "node-llama-cpp";

const [model_path, threads_arg, ...lengths] = process.argv.slice(2);
const threads = Number(threads_arg);
const log = [];
const llama = await getLlama({
    gpu: false, build: "never", skipDownload: true, usePrebuiltBinaries: true, progressLogs: false,
    maxThreads: threads, logLevel: "debug", logger: (level, message) => log.push(message),
});
const model = await llama.loadModel({modelPath: model_path, gpuLayers: 0, useMmap: true});
for (const arg of lengths.filter(l => l.startsWith("tg"))) {
    const m = Number(arg.slice(2));
    const context = await model.createContext({contextSize: Math.max(m + 32, 512), batchSize: 512, threads, sequences: 1});
    const seq = context.getSequence();
    let best = Infinity, best_cpu = Infinity;
    for (let rep = 0; rep < 3; rep++) {
        await seq.clearHistory();
        const n = rep === 0 ? 16 : m; /* rep 0: warm-up (pages, caches) */
        const t0 = performance.now(), c0 = process.cpuUsage();
        for (let i = 0; i < n; i++) await seq.evaluateWithoutGeneratingNewTokens([1000 + (i * 7919) % 30000]);
        const t = (performance.now() - t0) / 1000, c = process.cpuUsage(c0);
        if (rep > 0) best = Math.min(best, t), best_cpu = Math.min(best_cpu, (c.user + c.system) / 1e6);
    }
    /* cpu_seconds: the process's CPU time over the loop (all its threads: on a shared machine
     * wall-clock time counts the others' work; with several threads it counts their waiting) */
    console.log(JSON.stringify({generate: m, seconds: best, tokens_per_second: m / best, cpu_seconds: best_cpu,
                                tokens_per_cpu_second: m / best_cpu}));
    await context.dispose();
}
for (const n of lengths.filter(l => !l.startsWith("tg")).map(Number)) {
    const context = await model.createContext({contextSize: Math.max(n + 16, 512), batchSize: n, threads, sequences: 1});
    const seq = context.getSequence();
    const tokens = Array.from({length: n}, (_, i) => 1000 + (i * 7919) % 30000);
    let best = Infinity;
    for (let rep = 0; rep < 3; rep++) {
        await seq.clearHistory();
        const t0 = performance.now();
        await seq.evaluateWithoutGeneratingNewTokens(tokens);
        const t = (performance.now() - t0) / 1000;
        if (rep > 0) best = Math.min(best, t); /* rep 0: warm-up (pages, caches) */
    }
    console.log(JSON.stringify({tokens: n, seconds: best, tokens_per_second: n / best}));
    await context.dispose();
}
const backend = log.filter(l => /load_backend|REPACK/.test(l)).map(l => l.trim());
console.log(JSON.stringify({backend, system_info: llama.systemInfo}));
await model.dispose();
await llama.dispose();
