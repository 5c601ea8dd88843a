/** The `ringdiff` command line. */
import { Command, Option } from 'commander';
import { collect, intOption, numberOption } from './common.js';

// Spelled out here so that `--help` needs no TF.js import; a test keeps it equal to the registry.
const SAMPLER_LIST =
  'ddpm, ddim, sde-euler, pc-langevin, ode-euler, ode-heun, ode-rk45, dpmpp-2m, edm-heun, unipc-bh2 or dpmpp-2m-sde';

/** Parses argv and runs the chosen command. */
export async function main(argv: string[]): Promise<void> {
  const program = new Command('ringdiff')
    .description('Distributed data-parallel training of diffusion models with TensorFlow.js')
    .version('0.1.0')
    .showHelpAfterError();

  const backendOpt = () =>
    new Option(
      '--backend <name>',
      'compute backend: tensorflow-gpu, tensorflow, cpu (default: best that loads; env RINGDIFF_BACKEND)',
    );

  program
    .command('train')
    .description('train a job in this process (no --config: the embedded default job)')
    .option('-c, --config <file>', 'job config (YAML)')
    .option(
      '--set <key=value>',
      'override a config key (repeatable), e.g. --set train.steps=100',
      collect,
      [],
    )
    .addOption(backendOpt())
    .option('--pretty', 'human-readable logs instead of JSON')
    .option('--no-progress', 'no progress bar even on a terminal')
    .action(async (o) => {
      const { train } = await import('./train.js');
      await train(o);
    });

  /** The sampler options of `sample` and `bench sample` (absent = the sampler's default). */
  const samplerOptions = (c: Command, many: boolean) =>
    c
      .option(
        '--discretization <d>',
        "noise levels: auto (the sampler's own), uniform, quadratic, karras, trailing",
      )
      .option('--rho <r>', 'ρ of the karras discretisation (default 7)', numberOption('--rho'))
      .option('--churn <s>', 'edm-heun S_churn (default 0: deterministic)', numberOption('--churn'))
      .option('--churn-sigma-min <s>', 'edm-heun S_tmin (default 0)', numberOption('--churn-sigma-min'))
      .option('--churn-sigma-max <s>', 'edm-heun S_tmax (default ∞)', numberOption('--churn-sigma-max'))
      .option('--churn-noise <s>', 'edm-heun S_noise (default 1)', numberOption('--churn-noise'))
      .option(
        '--snr <r>',
        'pc-langevin corrector signal-to-noise ratio (default 0.16)',
        numberOption('--snr'),
      )
      .option(
        '--corrector-steps <m>',
        'pc-langevin corrector steps per level (default 1)',
        intOption('--corrector-steps', 0),
      )
      .addOption(
        many
          ? new Option('--tolerance <list>', 'ode-rk45 tolerances, e.g. 1e-2,1e-3 (default 1e-2,1e-3,1e-4)')
          : new Option('--tolerance <tol>', 'ode-rk45 rtol = atol (default 1e-5)').argParser(
              numberOption('--tolerance'),
            ),
      );

  const sampleCmd = program
    .command('sample')
    .description(
      'draw samples from a checkpoint, or from an analytic model (--config with model.kind: analytic), into a .png picture or a float32 .npy array',
    )
    .option('--checkpoint <dir>', 'checkpoint directory (ckpt-<step>)')
    .option('-c, --config <file>', 'a config with model.kind: analytic (no checkpoint needed)')
    .option('--set <key=value>', 'override a key of --config (repeatable)', collect, [])
    .requiredOption('--out <file>', 'output file: .png (image grid / scatter plot) or .npy')
    .option('--count <n>', 'number of samples', intOption('--count', 1), 64)
    .option('--sampler <name>', `${SAMPLER_LIST} (default ddpm)`)
    .option('--steps <k>', 'sampler steps (default 50; DDPM always runs all T)', intOption('--steps', 1))
    .option('--eta <e>', 'DDIM η (default 0 = deterministic)', numberOption('--eta'))
    .option('--guidance <w>', 'classifier-free guidance weight w', numberOption('--guidance'), 0)
    .option('--class <c>', 'class of every sample (default: cycle through classes)', intOption('--class', 0))
    .option('--seed <s>', 'sampling seed', intOption('--seed', 0), 0)
    .option('--ema', 'use the EMA weights (default)', true)
    .option('--raw', 'use the raw (non-EMA) weights')
    .option('--chunk <n>', 'samples per model call', intOption('--chunk', 1), 256);
  samplerOptions(sampleCmd, false)
    // A bad value (--steps 0) is one line naming the option, not the whole help.
    .showHelpAfterError(false)
    .addOption(backendOpt())
    .option('--no-progress', 'no progress bar')
    .action(async (o) => {
      const { sample } = await import('./sample.js');
      await sample({ ...o, ema: !o.raw });
    });

  program
    .command('doctor')
    .description('report which compute backends load here and why the others do not')
    .option('--json', 'print one JSON object')
    .addOption(backendOpt())
    .action(async (o) => {
      const { doctor } = await import('./doctor.js');
      await doctor(o);
    });

  program
    .command('coordinator')
    .description("a job's coordinator: rendezvous, membership, plans, central EMA, checkpoints, metrics")
    .option('-c, --config <file>', 'job config (YAML)')
    .option('--set <key=value>', 'override a config key (repeatable)', collect, [])
    .option('--listen <host:port>', 'gRPC address (port 0 = any free port)', '0.0.0.0:7070')
    .option('--metrics <host:port>', 'serve Prometheus /metrics here')
    .option('--exit-with-parent', 'stop (with a final checkpoint) when the process that started it exits')
    .addOption(backendOpt())
    .option('--pretty', 'human-readable logs instead of JSON')
    .action(async (o) => {
      const { runCoordinator } = await import('./coordinator.js');
      process.exitCode = await runCoordinator(o);
    });

  program
    .command('worker')
    .description('a training process of a distributed job (token: RINGDIFF_TOKEN or cluster.token)')
    .requiredOption('--coordinator <host:port>', 'coordinator address')
    .option(
      '-c, --config <file>',
      'local config: cluster.token and cluster.tls (the job config comes from the coordinator)',
    )
    .option('--set <key=value>', 'override a local config key (repeatable)', collect, [])
    .option('--data-root <dir>', 'resolve relative dataset paths of the job config here')
    .option('--fetch-shards', 'read every shard from the coordinator (no dataset on this host)')
    .option(
      '--ring-bind <endpoint>',
      'ring endpoint to bind: tcp://HOST:PORT (PORT 0 = free port) or ipc://PATH',
      'tcp://0.0.0.0:0',
    )
    .option('--ring-advertise <endpoint>', 'ring endpoint peers connect to (default: the bound one)')
    .option('--host <name>', 'host identity for the ring order (default: hostname)')
    .option('--metrics <host:port>', "serve this worker's Prometheus /metrics here")
    .option('--exit-with-parent', 'leave the job (as on SIGTERM) when the process that started it exits')
    .option(
      '--retry-for <seconds>',
      'keep retrying a lost coordinator this long',
      intOption('--retry-for', 1),
      600,
    )
    .addOption(backendOpt())
    .option('--pretty', 'human-readable logs instead of JSON')
    .action(async (o) => {
      const { runWorker } = await import('./worker.js');
      process.exitCode = await runWorker(o);
    });

  program
    .command('launch')
    .description('coordinator + N workers on this machine (no --config: the embedded default job)')
    .option('--workers <n>', 'worker processes', intOption('--workers', 1), 2)
    .option('-c, --config <file>', 'job config (YAML)')
    .option('--set <key=value>', 'override a config key (repeatable)', collect, [])
    .option('--metrics <host:port>', "serve the coordinator's Prometheus /metrics here")
    .addOption(backendOpt())
    .option('--no-progress', 'no progress bar even on a terminal')
    .action(async (o) => {
      const { launch } = await import('./launch.js');
      process.exitCode = await launch(o);
    });

  program
    .command('status')
    .description("a running job's workers, ranks, generation, step and samples/s")
    .requiredOption('--coordinator <host:port>', 'coordinator address')
    .option('-c, --config <file>', 'local config (cluster.tls)')
    .option('--set <key=value>', 'override a local config key (repeatable)', collect, [])
    .option('--json', 'print one JSON object')
    .action(async (o) => {
      const { status } = await import('./status.js');
      await status(o);
    });

  program
    .command('report <run_dir>')
    .description(
      'write <run_dir>/report.html: loss curves, samples/s, samples of each checkpoint, sampling weights',
    )
    .addOption(backendOpt())
    .action(async (dir: string, o: { backend?: string }) => {
      const { initBackend } = await import('../model/backend/index.js');
      const { writeReport } = await import('../telemetry/report.js');
      await initBackend(o.backend, { quiet: true });
      process.stdout.write(`${await writeReport(dir)}\n`);
    });

  const bench = program.command('bench').description('benchmarks of the product itself');
  bench
    .command('allreduce')
    .description(
      'ring all-reduce over N local processes: time per call, algbw, busbw (nccl-tests conventions)',
    )
    .option('--ranks <n>', 'processes in the ring (with --vs-gloo a list, e.g. 2,4)', '2')
    .option('--sizes <list>', 'buffer sizes, e.g. 1M,4M,16M,64M (bytes, K/M/G suffixes)', '1M,4M,16M,64M')
    .option('--iters <k>', 'timed calls per size (default 10)')
    .option('--warmup <k>', 'untimed calls per size first (default 5)')
    .option('--compression <c>', 'none or fp16 (fp16 on the wire, fp32 accumulation)', 'none')
    .option('--encryption <e>', 'none or curve (ZeroMQ CURVE with generated keys)', 'none')
    .option('--transport <t>', 'auto (ipc on one host), ipc or tcp', 'auto')
    .option('--chunk <size>', 'bytes per pipelined chunk')
    .option('--timeout <ms>', 'ring timeout')
    .option('--no-p2p', 'skip the raw point-to-point measurement')
    .option('--no-check', 'skip the check against the reference sum')
    .option('--json', 'print one JSON document')
    .option('--vs-gloo', "PyTorch's Gloo all-reduce side by side (the anchor gloo_allreduce.py), ratios")
    .option('--rounds <r>', 'rounds of ring and Gloo (--vs-gloo)', '3')
    .option('--python <path>', 'Python with torch (--vs-gloo; env RINGDIFF_PYTHON)')
    .option('--gloo-anchor <path>', 'gloo_allreduce.py (--vs-gloo; env RINGDIFF_GLOO_ANCHOR)')
    .action(async (o) => {
      const { benchAllreduce } = await import('./bench.js');
      await benchAllreduce(o);
    });

  const benchSampleCmd = bench
    .command('sample')
    .description(
      'quality vs NFE of every sampler on the analytic oracle (default) or a checkpoint: a table, and an SVG plot',
    )
    .option('--checkpoint <dir>', 'a trained checkpoint (quality against its dataset, read as in training)')
    .option(
      '-c, --config <file>',
      'a config with model.kind: analytic (default: the built-in 8-Gaussian mixture)',
    )
    .option('--set <key=value>', 'override a key of --config (repeatable)', collect, [])
    .option('--samplers <list>', 'comma-separated samplers (default: all)')
    .option('--steps <list>', 'step counts, e.g. 5,10,20,50 (default 5,10,20,50,100)')
    .option('--count <n>', 'samples per run (default 2000)', intOption('--count', 2))
    .option('--seed <s>', 'sampling seed', intOption('--seed', 0), 0)
    .option('--chunk <n>', 'samples per model call', intOption('--chunk', 1), 4096)
    .option('--plot <file>', 'SVG plot of quality vs NFE', 'bench-sample.svg')
    .option('--no-ode-error', 'skip the distance to the PF-ODE solution (one ode-rk45 run at tolerance 1e-6)')
    .option('--json', 'print one JSON document instead of the table');
  samplerOptions(benchSampleCmd, true)
    .showHelpAfterError(false)
    .addOption(backendOpt())
    .action(async (o) => {
      const { benchSample } = await import('./bench-sample.js');
      await benchSample(o);
    });

  const evalCmd = program.command('eval').description('evaluate a trained model and its samples');
  evalCmd
    .command('nll')
    .description('variational bound on the NLL of held-out data, bits/dim ± SE, and where the bits go')
    .option('--checkpoint <dir>', 'a run directory (its newest checkpoint) or a checkpoint (ckpt-<step>)')
    .option('-c, --config <file>', 'a config with model.kind: analytic (no checkpoint needed)')
    .option('--set <key=value>', 'override a key of --config (repeatable)', collect, [])
    .option('--data <spec>', "held-out data (default: the job dataset's test split; analytic: exact draws)")
    .option(
      '--count <n>',
      'examples, evenly spaced over the set (default min(1000, size))',
      intOption('--count', 1),
    )
    .option(
      '--timesteps <k>',
      'network calls per example: 2…T (stratified estimate) or all (full bound)',
      'all',
    )
    .option(
      '--variance <v>',
      'beta, posterior, learned or optimal (analytic only); default: as the model samples',
    )
    .option('--batch <b>', 'examples per network call', intOption('--batch', 1), 64)
    .option('--seed <s>', 'seed of the noise and timestep draws', intOption('--seed', 0), 0)
    .option('--json', 'print one JSON object')
    .option(
      '--out <file>',
      'write the JSON with the per-term curve here (default: <run dir>/eval/nll-*.json)',
    )
    .option('--raw', 'use the raw (non-EMA) weights')
    .addOption(backendOpt())
    .option('--no-progress', 'no progress bar')
    .showHelpAfterError(false)
    .action(async (o) => {
      const { evalNll } = await import('./eval-nll.js');
      await evalNll({ ...o, ema: !o.raw });
    });

  const data = program.command('data').description('dataset tools');
  data
    .command('inspect <spec>')
    .description(
      'count, shape, dtype, label histogram and value range of a dataset (spec as in data.dataset)',
    )
    .option('--grid <file>', 'write a PNG grid of the first 64 examples')
    .option('--image-size <n>', 'image side after preprocessing', intOption('--image-size', 1))
    .option('--channels <c>', 'channels after preprocessing', intOption('--channels', 1))
    .option('--json', 'print one JSON object')
    .action(async (spec: string, o) => {
      const { inspectData } = await import('./data.js');
      await inspectData(spec, o);
    });

  program
    .command('model')
    .description(
      "the job's model for its dataset's data shape, not trained: trainable params, fixed tensors, per-module counts",
    )
    .option('-c, --config <file>', 'job config (YAML)')
    .option('--set <key=value>', 'override a config key (repeatable)', collect, [])
    .option('--json', 'print one JSON object')
    .action(async (o) => {
      const { describeModel } = await import('./model.js');
      describeModel(o);
    });

  // `eval fid` and `eval train-features`: sample-quality metrics (src/eval/).
  evalCmd
    .command('fid')
    .description(
      'FID, KID ± SE, Inception Score, precision/recall of samples against a reference dataset, named after the feature network',
    )
    .requiredOption(
      '--samples <path>',
      'samples: float32 .npy of `ringdiff sample`, uint8 NHWC .npz (arr_0) or a PNG folder',
    )
    .requiredOption('--ref <spec>', 'reference dataset spec, e.g. mnist:test')
    .option(
      '--net <name=weights>',
      'built-in network: mnistcnn=<file.safetensors> (from eval train-features)',
    )
    .option('--inception <dir>', 'standard InceptionV3 as a local TF.js graph model directory (see README)')
    .option('--count <n>', 'samples to use (default: all, spread evenly)', intOption('--count', 1))
    .option('--ref-count <n>', 'reference images (default: all, spread evenly)', intOption('--ref-count', 1))
    .option('--kid-subsets <n>', 'KID subsets', intOption('--kid-subsets', 1), 100)
    .option(
      '--kid-subset-size <m>',
      'KID subset size (capped at the smaller set)',
      intOption('--kid-subset-size', 4),
      1000,
    )
    .option('--is-splits <n>', 'Inception Score splits', intOption('--is-splits', 1), 10)
    .option('--k <k>', 'precision/recall neighbourhood size', intOption('--k', 1), 3)
    .option('--seed <s>', 'seed of the KID subsets', intOption('--seed', 0), 0)
    .option('--batch <n>', 'images per network call', intOption('--batch', 1), 64)
    .option(
      '--export-npz <file>',
      'also write the samples as uint8 NHWC arr_0 .npz (guided-diffusion evaluator)',
    )
    .option('--export-png <dir>', 'also write the samples as a PNG folder (clean-fid, pytorch-fid)')
    .option(
      '--export-stats <file>',
      "also write the samples' mu/sigma in pytorch-fid's .npz layout (--inception only)",
    )
    .option('--cache-dir <dir>', 'reference feature cache (default $RINGDIFF_CACHE_DIR or ~/.cache/ringdiff)')
    .option('--no-cache', 'recompute the reference features, write no cache entry')
    .option('--json', 'print one JSON object')
    .addOption(backendOpt())
    .showHelpAfterError(false)
    .action(async (o) => {
      const { evalFid } = await import('./eval-fid.js');
      await evalFid(o);
    });
  evalCmd
    .command('run')
    .description(
      "the job's evaluation (eval.*: sample metrics, bits/dim) of a checkpoint, by one process or N that split the samples as training workers do",
    )
    .requiredOption('--checkpoint <dir>', 'checkpoint directory (ckpt-<step>)')
    .option('--set <key=value>', 'override an eval.* key of the checkpoint config (repeatable)', collect, [])
    .option(
      '--workers <n>',
      'local processes forming a ring (same numbers for any n)',
      intOption('--workers', 1),
      1,
    )
    .addOption(new Option('--rank <r>').argParser(intOption('--rank', 0)).hideHelp())
    .addOption(new Option('--ring <dir>').hideHelp())
    .option('--json', 'print one JSON object')
    .addOption(backendOpt())
    .showHelpAfterError(false)
    .action(async (o) => {
      const { evalRun } = await import('./eval-run.js');
      await evalRun(o);
    });
  evalCmd
    .command('train-features')
    .description('train the built-in feature network (mnistcnn) on a labelled dataset for eval fid')
    .requiredOption('--data <spec>', 'labelled training split, e.g. mnist:train')
    .requiredOption('--out <file>', 'weights file (.safetensors)')
    .option('--epochs <n>', 'passes over the data', intOption('--epochs', 1), 3)
    .option('--steps <n>', 'optimiser steps (overrides --epochs)', intOption('--steps', 1))
    .option('--batch <n>', 'batch size', intOption('--batch', 1), 64)
    .option('--lr <r>', 'Adam learning rate', numberOption('--lr'), 1e-3)
    .option('--seed <s>', 'initialisation and order seed', intOption('--seed', 0), 0)
    .option('--val-fraction <f>', 'share held out to report accuracy', numberOption('--val-fraction'), 0.05)
    .option('--json', 'print one JSON object')
    .addOption(backendOpt())
    .showHelpAfterError(false)
    .action(async (o) => {
      const { trainFeatures } = await import('./eval-train-features.js');
      await trainFeatures(o);
    });

  program
    .command('config')
    .description('print the resolved job config')
    .option('--print', 'print the resolved config as YAML (the default action)')
    .option('-c, --config <file>', 'job config (YAML)')
    .option('--set <key=value>', 'override a config key (repeatable)', collect, [])
    .action(async (o) => {
      const { printConfig } = await import('./config.js');
      printConfig(o);
    });

  await program.parseAsync(argv);
}
