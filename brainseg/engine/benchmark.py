"""Benchmark a brainseg model (training and inference speed, FLOP rate, peak memory), alone or with peers
(the nets a user would pick instead, timed side by side in one process).

Usage::

    python tools/benchmark.py --config-file configs/lgg/unext.py [--batch 8] [--size 256]
        [--threads 2] [--repeats 12] [--warmup 3] [--compile] [--weights PTH] [--json PATH] [key=value ...]
    python tools/benchmark.py --config-file configs/lgg/unext.py --peers smp_unet monai_basicunet
        [--reference-unext PATH] [--compile] [--json PATH] [...] [-- key=value ...]
    python tools/benchmark.py ms_deform_attn [args]   # brainseg.layers.benchmark
    python tools/benchmark.py resampling [args]       # brainseg.layers.resampling_benchmark
    python tools/benchmark.py loader --config-file configs/lgg/unext_demo.py   # brainseg.data.benchmark

The model is ``instantiate(cfg.model)`` after the ``key=value`` overrides (detectron2 lazy
syntax, e.g. ``model.channels_last=False``), run in the precision training and prediction use
(``train.precision``, "auto" by default: :func:`brainseg.engine.defaults.resolve_train_precision`).
Inputs are dataset-mapper-style dicts (uint8 images, 0/1 ``sem_seg`` with tumour blobs).

**Model alone** (no ``--peers``). Phases run in this order, each timed with
:func:`brainseg.utils.benchmark.benchmark` (warm-up, then the median of the repetitions):

* ``inference``: ``model.eval()``, ``torch.no_grad()``, the full ``model(inputs)``
  (normalisation, padding, net, resizing, connected components);
* ``inference (compiled)`` with ``--compile``: the same with ``model.compile_inference=True``;
* ``training``: forward, sum of the losses, backward and a step of the config's optimizer
  (``cfg.optimizer``, as tools/train_net.py builds it).

Reported per phase: images/s, median ms per batch, median process CPU time per batch (all
threads; with ``--threads 1`` it measures the work itself even on a busy machine), GFLOP/s
(matmul/conv FLOPs counted with ``torch.utils.flop_counter`` for one batch, divided by the
median time) and the peak RSS of the process up to the end of the phase.

``--weights PTH`` loads a trained checkpoint first. Without it the net is untrained (initialised
from seed 0, the same weights every run), its output is noise, and the connected-component
instances of inference see hundreds of components per image: a slower post-processing than a
trained model's, and one that depends on the seed.

**With peers** (``--peers`` and/or ``--reference-unext``, see :mod:`brainseg.engine.peers`):
brainseg's model as configured (one variant, "as configured") and every peer in the variants
``eager``, ``channels_last`` and, with ``--compile``, ``compiled+channels_last``, each in the
phases ``inference`` (brainseg: the full model as above; a peer: ``no_grad`` net + sigmoid) and
``training`` (brainseg: as above; a peer: net, BCE-with-logits loss, backward, a step of
``torch.optim.Adam`` with PyTorch's defaults, as the peers' own scripts build it), all
with the same batch, size, threads and precision. Every (model, variant, phase) is called once
(compiling, and setting aside what cannot run here), then the warm-up runs, then interleaved
rounds (A, B, C, A, B, C, ...) so that the drift of a shared machine hits all of them alike;
medians are reported, with the ratio of brainseg's images/s to the best peer row per phase. A
peer whose package is missing gets one line saying what to install; the others still run.

By default glibc's malloc is tuned first (:func:`brainseg.utils.malloc.tune_glibc_malloc`;
``--no-tune-malloc`` keeps the defaults). ``--json PATH`` also writes every row, the machine
(CPU model, instruction sets, threads, torch) and the settings as JSON.
"""

import argparse
import copy
import dataclasses
import functools
import json
import os
import resource
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import instantiate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from brainseg.data import benchmark as loader_benchmark
from brainseg.inference.model import StrictCheckpointer
from brainseg.layers import benchmark as ms_deform_attn_benchmark
from brainseg.layers import resampling_benchmark
from brainseg.layers.extension import pytorch_compositions
from brainseg.utils.benchmark import benchmark, cpu_model_name
from brainseg.utils.config import load_config
from brainseg.utils.errors import ConfigError
from brainseg.utils.io import atomic_write
from brainseg.utils.malloc import tune_glibc_malloc
from brainseg.utils.precision import PrecisionPolicy, resolve_precision

from .defaults import resolve_train_precision
from .peers import PEERS, PeerUnavailableError, load_reference_unext

__all__ = [
    "main",
    "make_inputs",
    "build_phases",
    "BenchmarkRow",
    "PeerRatio",
    "PeerComparison",
    "compare_with_peers",
    "ratios_to_best_peer",
    "cpu_instruction_sets",
]

PHASES = ("inference", "training")
BRAINSEG_VARIANT = "as configured"
# /proc/cpuinfo flags of the vector and matrix instruction sets that matter for the kernels
_ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX512-BF16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
}

Key = Tuple[str, str, str]  # (model, variant, phase)
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def make_inputs(batch: int, size: int, *, seed: int = 0) -> List[Dict]:
    """Mapper-style inputs: random uint8 (3, size, size) images and 0/1 masks with a disk."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inputs = []
    for _ in range(batch):
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=generator).tolist()
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < (size // 8) ** 2).long()
        image = torch.randint(0, 200, (3, size, size), dtype=torch.uint8, generator=generator)
        image[:, mask.bool()] += 50
        inputs.append({"image": image, "sem_seg": mask, "height": size, "width": size})
    return inputs


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward), as PyTorch's
    operators compute them: brainseg's fused kernels are swapped for their compositions while
    counting (:func:`~brainseg.layers.extension.pytorch_compositions`), so a convolution is
    counted at its direct cost even where Winograd's algorithm runs it with fewer operations."""
    with pytorch_compositions(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def cpu_instruction_sets() -> List[str]:
    """The vector/matrix instruction sets of this CPU among AVX2, FMA, AVX-512, AVX512-BF16, AMX
    and AMX-BF16, from the ``flags`` of ``/proc/cpuinfo`` (empty when it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.partition(":")[2].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return [name for flag, name in _ISA_FLAGS.items() if flag in flags]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def default_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """What a training script builds when nobody tunes it: ``torch.optim.Adam`` (lr 1e-4) with
    PyTorch's defaults, i.e. one small op per parameter on a CPU. The peers train with it."""
    return torch.optim.Adam(model.parameters(), lr=1e-4)


def config_optimizer(cfg) -> OptimizerFactory:
    """The optimizer a config trains with (``cfg.optimizer``, as tools/train_net.py builds it),
    or :func:`default_optimizer` if the config has none."""
    if "optimizer" not in cfg:
        return default_optimizer

    def build(model: nn.Module) -> torch.optim.Optimizer:
        optimizer_cfg = copy.deepcopy(cfg.optimizer)
        optimizer_cfg.params.model = model
        return instantiate(optimizer_cfg)

    return build


def build_phases(
    model: nn.Module,
    inputs: List[Dict],
    *,
    compiled: bool,
    precision: Optional[PrecisionPolicy] = None,
    optimizer: OptimizerFactory = default_optimizer,
) -> Dict[str, Callable[[], object]]:
    """The timed units of work of the model alone, by phase name.

    Args:
        model: the model; its training mode is switched by the phases.
        inputs: mapper-style inputs (see :func:`make_inputs`).
        compiled: add the phase ``inference (compiled)``.
        precision: the forward passes' precision (default fp32).
        optimizer: builds the training phase's optimizer for the model (e.g.
            :func:`config_optimizer`).
    """
    policy = precision or resolve_precision("fp32", _device(model))
    optimizer = optimizer(model)

    def inference(compile_inference: bool) -> Callable[[], object]:
        def run():
            model.eval()
            model.compile_inference = compile_inference
            with torch.no_grad():
                return policy.run(model, inputs)

        return run

    def training():
        model.train()
        total = sum(policy.run(model, inputs).values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total

    phases = {"inference": inference(False)}
    if compiled:
        phases["inference (compiled)"] = inference(True)
    phases["training"] = training
    return phases


# ---------------------------------------------------------------- peers, interleaved


@dataclasses.dataclass(frozen=True)
class BenchmarkRow:
    """The timing of one (model, variant, phase)."""

    model: str
    variant: str
    phase: str
    parameters: int
    images_per_s: float
    ms_per_batch: float  # median wall time
    cpu_ms_per_batch: float  # median process CPU time (all threads)


@dataclasses.dataclass(frozen=True)
class PeerRatio:
    """brainseg's images/s over the best peer row's in one phase."""

    phase: str
    ratio: float
    ours: BenchmarkRow
    best_peer: BenchmarkRow


@dataclasses.dataclass(frozen=True)
class PeerComparison:
    """What :func:`compare_with_peers` measured.

    Attributes:
        rows: one per (model, variant, phase) that ran, by phase, brainseg first in each.
        ratios: phase -> :class:`PeerRatio` (phases where brainseg and a peer ran).
        unavailable: what could not run (a peer or one of its rows) -> the one-line reason.
    """

    rows: List[BenchmarkRow]
    ratios: Dict[str, PeerRatio]
    unavailable: Dict[str, str]


def ratios_to_best_peer(rows: Sequence[BenchmarkRow], ours: str) -> Dict[str, PeerRatio]:
    """Per phase, the images/s of the best row of model ``ours`` divided by the best peer row's.

    Args:
        rows: timed rows of several models.
        ours: the model name of brainseg's rows; every other model is a peer.

    Returns:
        phase -> :class:`PeerRatio`, for the phases where ``ours`` and at least one peer have rows.
    """
    ratios = {}
    for phase in dict.fromkeys(row.phase for row in rows):
        mine = [row for row in rows if row.phase == phase and row.model == ours]
        peers = [row for row in rows if row.phase == phase and row.model != ours]
        if mine and peers:
            best_mine = max(mine, key=lambda row: row.images_per_s)
            best_peer = max(peers, key=lambda row: row.images_per_s)
            ratios[phase] = PeerRatio(phase, best_mine.images_per_s / best_peer.images_per_s, best_mine, best_peer)
    return ratios


def _brainseg_steps(model: nn.Module, inputs: List[Dict], policy: PrecisionPolicy,
                    make_optimizer: OptimizerFactory) -> Dict[str, Callable[[], object]]:
    """Inference and training steps of brainseg's model as configured, on two copies of it (so
    that neither phase switches the other's mode, and eval keeps its folded net)."""
    inference_model, training_model = model.eval(), copy.deepcopy(model).train()
    optimizer = make_optimizer(training_model)

    def inference():
        with torch.no_grad():
            return policy.run(inference_model, inputs)

    def training():
        total = sum(policy.run(training_model, inputs).values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total

    return {"inference": inference, "training": training}


def _peer_steps(
    build: Callable[[], nn.Module],
    images: torch.Tensor,
    targets: torch.Tensor,
    policy: PrecisionPolicy,
    *,
    channels_last: bool,
    compiled: bool,
) -> Dict[str, Callable[[], object]]:
    """Inference (no_grad, net + sigmoid) and training (net, BCE-with-logits, backward, Adam)
    steps of a peer, each on its own fresh instance."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = images.contiguous(memory_format=memory_format)

    def instance(training: bool) -> nn.Module:
        net = build().to(images.device, memory_format=memory_format).train(training)
        return torch.compile(net) if compiled else net

    inference_net, training_net = instance(False), instance(True)
    optimizer = default_optimizer(training_net)

    def inference():
        with torch.no_grad():
            return torch.sigmoid(policy.run(inference_net, x))

    def training():
        loss = F.binary_cross_entropy_with_logits(policy.run(training_net, x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return {"inference": inference, "training": training}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def compare_with_peers(
    model: nn.Module,
    peers: Mapping[str, Callable[[], nn.Module]],
    *,
    batch: int,
    size: int,
    warmup: int,
    repeats: int,
    compile: bool = False,
    precision: Optional[PrecisionPolicy] = None,
    optimizer: OptimizerFactory = default_optimizer,
    synchronize: Optional[Callable[[], None]] = None,
) -> PeerComparison:
    """Time brainseg's model as configured and the peer nets, interleaved in this process.

    Args:
        model: brainseg's model (e.g. ``BrainSegSemantic``, mapper-style inputs), on the device
            to run on; a copy of it is made for the training phase.
        peers: name -> builder of a fresh net mapping (B, 3, H, W) to (B, 1, H, W) logits
            (:data:`brainseg.engine.peers.PEERS`); a builder may raise
            :class:`~brainseg.engine.peers.PeerUnavailableError`.
        batch, size: batch size and image height = width.
        warmup, repeats: untimed calls per row after the first one, and interleaved timed rounds.
        compile: add each peer's ``compiled+channels_last`` variant (``torch.compile``).
        precision: the forward passes' precision for every model (default fp32).
        optimizer: builds brainseg's training optimizer (e.g. :func:`config_optimizer`); the
            peers train with :func:`default_optimizer`, as their own scripts do.
        synchronize: e.g. ``torch.cuda.synchronize`` for asynchronous devices.

    Returns:
        The :class:`PeerComparison`; brainseg's rows are named ``"brainseg <net class>"``.
    """
    device = _device(model)
    policy = precision or resolve_precision("fp32", device)
    inputs = make_inputs(batch, size)
    images = torch.stack([x["image"] for x in inputs]).to(device, torch.float32)
    images = (images - images.mean()) / images.std()
    targets = torch.stack([x["sem_seg"] for x in inputs])[:, None].to(device, torch.float32)
    ours = f"brainseg {type(getattr(model, 'net', model)).__name__}"
    parameters = {ours: sum(p.numel() for p in model.parameters())}
    steps: Dict[Key, Callable[[], object]] = {}
    for phase, step in _brainseg_steps(model, inputs, policy, optimizer).items():
        step()  # the first call, as for the peers (brainseg's own errors propagate)
        steps[(ours, BRAINSEG_VARIANT, phase)] = step
    variants = {"eager": (False, False), "channels_last": (True, False)}
    if compile:
        variants["compiled+channels_last"] = (True, True)
    unavailable: Dict[str, str] = {}
    for name, build in peers.items():
        try:
            parameters[name] = sum(p.numel() for p in build().parameters())
        except PeerUnavailableError as e:
            unavailable[name] = str(e)
            continue
        for variant, (channels_last, compiled) in variants.items():
            peer_steps = _peer_steps(build, images, targets, policy, channels_last=channels_last, compiled=compiled)
            for phase, step in peer_steps.items():
                try:  # a first call: compiles, and finds what cannot run here
                    step()
                except Exception as e:  # a peer failing (e.g. no compiler) must not stop the others
                    unavailable[f"{name} {variant} {phase}"] = _one_line(e)
                else:
                    steps[(name, variant, phase)] = step
    labels = {" | ".join(key): key for key in steps}
    timings = benchmark(
        {label: steps[key] for label, key in labels.items()}, warmup=warmup, repeats=repeats, synchronize=synchronize
    )
    rows = [
        BenchmarkRow(*key, parameters[key[0]], batch / t.median, t.median * 1e3, t.cpu_median * 1e3)
        for key, t in ((labels[label], t) for label, t in timings.items())
    ]
    rows.sort(key=lambda row: PHASES.index(row.phase))  # stable: brainseg first in each phase
    return PeerComparison(rows, ratios_to_best_peer(rows, ours), unavailable)


# ---------------------------------------------------------------- command line


def _machine(device: torch.device) -> Dict:
    return {
        "device": str(device),
        "cpu": cpu_model_name(),
        "instruction_sets": cpu_instruction_sets(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _header(args: argparse.Namespace, machine: Dict, policy: PrecisionPolicy, notes: str) -> str:
    isa = ", ".join(machine["instruction_sets"]) or "instruction sets unknown"
    return (
        f"device {machine['device']} ({machine['cpu']}; {isa}), torch {machine['torch']}, "
        f"{machine['threads']} threads, batch {args.batch} x 3 x {args.size} x {args.size}, "
        f"precision {policy.describe()}, weights {args.weights or 'untrained (random init)'}, "
        f"median of {args.repeats} runs after {args.warmup} warm-up runs; {notes}"
    )


def _write_json(path: str, payload: Dict) -> None:
    atomic_write(path, json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")


def _settings(args: argparse.Namespace, policy: PrecisionPolicy) -> Dict:
    return dict(batch=args.batch, size=args.size, repeats=args.repeats, warmup=args.warmup, compile=args.compile,
                precision=policy.name, precision_detail=policy.describe(), malloc_tuned=args.malloc_tuned,
                weights=args.weights)


def _synchronize(device: torch.device) -> Optional[Callable[[], None]]:
    return torch.cuda.synchronize if device.type == "cuda" else None


def run_model_benchmark(args: argparse.Namespace, model: nn.Module, device: torch.device,
                        policy: PrecisionPolicy) -> int:
    """The model alone: its phases one after the other (see the module doc)."""
    inputs = make_inputs(args.batch, args.size)
    synchronize = _synchronize(device)
    params = sum(p.numel() for p in model.parameters())
    load_before = os.getloadavg()
    rows = []
    for name, fn in build_phases(model, inputs, compiled=args.compile, precision=policy,
                                 optimizer=args.optimizer).items():
        flops = count_flops(fn)
        timing = benchmark({name: fn}, warmup=args.warmup, repeats=args.repeats, synchronize=synchronize)[name]
        if name == "inference (compiled)" and not model.compile_inference:
            name = "inference (compile failed: eager)"
        rows.append(dict(phase=name, images_per_s=args.batch / timing.median, ms_per_batch=timing.median * 1e3,
                         cpu_ms_per_batch=timing.cpu_median * 1e3, gflops_per_s=flops / timing.median / 1e9,
                         peak_rss_mib=peak_rss_mb()))
    machine = _machine(device)
    loads = {"before": load_before[0], "after": os.getloadavg()[0]}
    net = type(getattr(model, "net", model)).__name__
    print(
        f"{net} ({params / 1e6:.3f} M parameters) from {args.config_file} {' '.join(args.opts)}\n"
        + _header(args, machine, policy, f"glibc malloc tuned: {args.malloc_tuned}; "
                  f"load average before {loads['before']:.2f}, after {loads['after']:.2f}")
        + "\n"
    )
    print("| phase | images/s | ms/batch | CPU ms/batch | GFLOP/s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['phase']} | {r['images_per_s']:.1f} | {r['ms_per_batch']:.1f} | {r['cpu_ms_per_batch']:.0f} "
              f"| {r['gflops_per_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    if args.json:
        _write_json(args.json, dict(config_file=args.config_file, overrides=args.opts, machine=machine,
                                    settings=_settings(args, policy), load_average=loads, model=net,
                                    parameters=params, rows=rows))
    return 0


def run_peer_benchmark(args: argparse.Namespace, model: nn.Module, device: torch.device,
                       policy: PrecisionPolicy) -> int:
    """brainseg's model and the peers, interleaved (see the module doc)."""
    peers = {name: PEERS[name] for name in args.peers}
    if args.reference_unext:
        peers["reference_unext"] = functools.partial(load_reference_unext, args.reference_unext, img_size=args.size)
    load_before = os.getloadavg()
    result = compare_with_peers(
        model, peers, batch=args.batch, size=args.size, warmup=args.warmup, repeats=args.repeats,
        compile=args.compile, precision=policy, optimizer=args.optimizer, synchronize=_synchronize(device),
    )
    machine = _machine(device)
    loads = {"before": load_before[0], "after": os.getloadavg()[0]}
    configured = {
        "channels_last": getattr(model, "memory_format", None) == torch.channels_last,
        "compile_inference": getattr(model, "compile_inference", False),
        "fuse_for_inference": getattr(model, "fuse_for_inference", False),
    }
    print(
        f"brainseg as configured by {' '.join([args.config_file, *args.opts])} "
        f"({', '.join(f'{k}={v}' for k, v in configured.items())}) vs peers, interleaved in one process\n"
        + _header(args, machine, policy, f"interleaved rounds; glibc malloc tuned: {args.malloc_tuned}; "
                  f"load average before {loads['before']:.2f}, after {loads['after']:.2f}")
        + "\nbrainseg inference = the whole model (normalisation, padding, net, resizing, connected components); "
        "peer inference = net + sigmoid. Training = forward, loss, backward, optimizer step (brainseg: its config's "
        "optimizer; peers: torch.optim.Adam with PyTorch's defaults).\n"
    )
    print("| model | variant | phase | M params | images/s | ms/batch | CPU ms/batch |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in result.rows:
        print(f"| {r.model} | {r.variant} | {r.phase} | {r.parameters / 1e6:.2f} | {r.images_per_s:.1f} "
              f"| {r.ms_per_batch:.1f} | {r.cpu_ms_per_batch:.0f} |")
    print()
    for phase, ratio in result.ratios.items():
        best = ratio.best_peer
        print(f"{phase}: brainseg / best peer ({best.model}, {best.variant}) = {ratio.ratio:.2f}x images/s")
    for name, reason in result.unavailable.items():
        print(f"not run: {name}: {reason}")
    if args.json:
        _write_json(args.json, dict(
            config_file=args.config_file, overrides=args.opts, machine=machine, settings=_settings(args, policy),
            load_average=loads, brainseg=configured, rows=[dataclasses.asdict(r) for r in result.rows],
            ratios={phase: dict(ratio=r.ratio, ours=f"{r.ours.model} | {r.ours.variant}",
                                best_peer=f"{r.best_peer.model} | {r.best_peer.variant}")
                    for phase, r in result.ratios.items()},
            unavailable=result.unavailable,
        ))
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="LazyConfig .py file with cfg.model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--compile", action="store_true",
        help="model alone: also time inference with torch.compile; with peers: add their compiled variant",
    )
    parser.add_argument(
        "--peers", nargs="+", default=[], choices=sorted(PEERS), metavar="PEER",
        help=f"time brainseg side by side with these nets ({', '.join(sorted(PEERS))}); benchmark-only packages",
    )
    parser.add_argument(
        "--reference-unext", metavar="PATH",
        help="also time the reference UNeXt from this checkout of jeya-maria-jose/UNeXt-pytorch (its archs.py)",
    )
    parser.add_argument(
        "--weights", metavar="PATH",
        help="load these trained weights first (tools/train_net.py checkpoint): post-processing then sees "
             "realistic predictions (an untrained net's noise has hundreds of components per image)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows, machine and settings as JSON")
    parser.add_argument(
        "--no-tune-malloc",
        dest="tune_malloc",
        action="store_false",
        help="keep glibc's default malloc thresholds (see tune_glibc_malloc)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER,
        help="config overrides key=value, last (after --peers NAME ..., separate them with --)",
    )
    args = parser.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    misplaced = [opt for opt in args.opts if opt.startswith("--")]
    if misplaced:
        raise ConfigError(f"{misplaced[0]} comes after the key=value overrides; give the options first")
    return args


def main(argv: Sequence[str] = None) -> int:
    """``tools/benchmark.py``: prints the tables; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    subcommands = {"ms_deform_attn": ms_deform_attn_benchmark.main, "loader": loader_benchmark.main,
                   "resampling": resampling_benchmark.main}
    if argv and argv[0] in subcommands:
        return subcommands[argv[0]](argv[1:])
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    args.malloc_tuned = tune_glibc_malloc() if args.tune_malloc else False
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    policy = resolve_train_precision(cfg.get("train", {}), device)
    args.optimizer = config_optimizer(cfg)
    torch.manual_seed(0)  # the same untrained weights every run: their noise sets the post-processing cost
    model = instantiate(cfg.model)
    if args.weights:
        StrictCheckpointer(model, allow_unsafe_load=cfg.get("train", {}).get("allow_unsafe_checkpoint", False)).load(
            args.weights)
    model.to(device)
    run = run_peer_benchmark if args.peers or args.reference_unext else run_model_benchmark
    return run(args, model, device, policy)
