"""Kernel-configuration sweep: times the forward and backward kernels of
csrc/cuda/ under many thread mappings, to choose the entries of the tables in
csrc/cuda/kernel_config.h from measurements.

Each candidate (threads per row, bytes per thread, rows per CTA, cluster,
staged rows ahead, resident threads per SM, grid mode / accumulator place) is
compiled as its own instantiation of the production kernel templates
(ln_fwd_kernel / ln_bwd_kernel, through the same launch_forward_entry /
launch_backward_entry as the package) into a library of operators
(torch.ops.fastlayernorm_tune.runN); every candidate is checked against
torch's float32 layer_norm (and its autograd) first and then timed against a
device-to-device copy in the same process.

    python benchmarks/tune_kernels.py --out tune.json            # GPU needed
    python benchmarks/tune_kernels.py --dtypes bf16 --sizes 4096 --dry-run
    # compile on a machine without a GPU, time on one (same other arguments):
    python benchmarks/tune_kernels.py --build-only --build-dir D ...
    python benchmarks/tune_kernels.py --prebuilt --build-dir D ...

The JSON lists every candidate's time and fraction of copy; the summary prints
the best candidate per (direction, dtype, N).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

DTYPES = {"bf16": ("c10::BFloat16", 2), "fp16": ("c10::Half", 2), "fp32": ("float", 4)}
DEFAULT_SIZES = [512, 1024, 2048, 3072, 4096, 4099, 5120, 8192, 12288, 16384, 32768, 65536]


def row_threads_options(row_bytes: int, bpt: int):
    """Threads per row that hold a row of row_bytes at bpt bytes each: powers of
    two up to a warp, multiples of a warp above (not only powers of two, so
    a 10 KiB row can take 320 threads instead of 512)."""
    need = math.ceil(row_bytes / bpt)
    if need <= 32:
        return [1 << (need - 1).bit_length()]
    warps = math.ceil(need / 32) * 32
    pow2 = 1 << (need - 1).bit_length()
    return sorted({warps, pow2})


def row_in_smem_candidates(row_bytes: int):
    """Forward entries whose row lives in shared memory (grid mode 2): CTAs of
    128-1024 threads holding 32-512 bytes of the row each, a cluster of 1-8
    CTAs per row (slices of at least 16 KiB), at most 200 KiB of the row per
    CTA. One-pass (flag 2) and persistent with 0-1 rows ahead (flag 3, weight
    and bias in shared memory). Registers for the CTAs the shared memory lets
    an SM hold (min_threads 0)."""
    out = []
    for cluster in (1, 2, 4, 8):
        for threads in (128, 256, 512, 1024):
            per_thread = math.ceil(row_bytes / (cluster * threads) / 16) * 16
            if not 32 <= per_thread <= 512 or threads * per_thread > 200 * 1024:
                continue
            if cluster > 1 and row_bytes < cluster * 16 * 1024:
                continue  # slices under 16 KiB: a smaller cluster holds the row
            out.append((threads, per_thread, 1, cluster, 0, 0, 2))
            # Persistent (flag 3): weight/bias once in shared memory, 0-1 rows ahead.
            for stages in (0, 1):
                if (stages + 3) * threads * per_thread <= 200 * 1024:
                    out.append((threads, per_thread, 1, cluster, stages, 0, 3))
    return out


def table_configs(direction: str, dtype: str, fast_memory: bool = False, w32: bool = False,
                  shifted: bool = False):
    """The entries of a kernel table of csrc/cuda/kernel_config.h, as
    (max_row_bytes, candidate tuple) pairs in table order (--table); with
    fast_memory, the merged table of cards of faster memory that launch.cuh
    picks for the rows (shifted or not) and the dtype pair (w32 = float32
    weights), read through its merged_table<> chain (_table_entries)."""
    prefix = "kForward" if direction == "fwd" else "kBackward"
    width = "32" if DTYPES[dtype][1] == 4 else "16"
    if not fast_memory:
        return _table_entries(direction, f"{prefix}Configs{width}")
    same_weight = width == "16" and not w32
    if shifted:
        name = f"{prefix}ShiftedConfigs{width}FastMemory"
        if direction == "fwd" and same_weight:
            name = "kForwardShiftedConfigs16SameWeightFastMemory"
    elif direction == "bwd" and same_weight and dtype == "bf16":
        name = "kBackwardConfigsBF16FastMemory"
    elif same_weight:
        name = f"{prefix}Configs16SameWeightFastMemory"
    else:
        name = f"{prefix}Configs{width}FastMemory"
    return _table_entries(direction, name)


def _table_entries(direction: str, name: str):
    """The entries of table `name` of csrc/cuda/kernel_config.h: an array, or a
    table merged from two (`merged_table<kBase, kChanges>()`: the changes of a
    max_row_bytes replace the base's entries of it, as merge_entries)."""
    text = (REPO / "csrc" / "cuda" / "kernel_config.h").read_text()
    m = re.search(rf"\b{name}\s*=\s*merged_table<(\w+),\s*(\w+)>\(\)", text)
    if not m:
        return _parse_entries(direction, name)
    new = _table_entries(direction, m.group(2))
    replaced = {e[0] for e in new}
    return sorted([e for e in _table_entries(direction, m.group(1)) if e[0] not in replaced] + new,
                  key=lambda e: e[0])


def _parse_entries(direction: str, name: str):
    """The entries of the array `name` of csrc/cuda/kernel_config.h, as
    (max_row_bytes, candidate tuple, shifted mapping or None, exact rows only)
    in array order."""
    text = (REPO / "csrc" / "cuda" / "kernel_config.h").read_text()
    body = text.split(f"{name}[] = {{", 1)[1].split("\n};", 1)[0]
    words = {"kGrid": 0, "false": 0, "true": 1, "kAccSmem": 1}
    out = []
    # Entries, each on one line or wrapped over several (brackets balanced).
    entries, buf = [], ""
    for line in body.splitlines():
        buf += line.split("//")[0].strip()
        if buf and buf.count("(") == buf.count(")") and buf.count("{") == buf.count("}"):
            entries.append(buf)
            buf = ""
    for line in entries:
        line = line.rstrip(",")
        # for_exact_rows_only(entry): the entry takes only rows that fill its
        # mapping (the next entry, of the same max_row_bytes, the others);
        # entry_of(kTable, bytes): that table's entry of that max_row_bytes.
        exact_only = line.startswith("for_exact_rows_only(")
        if exact_only:
            line = line[len("for_exact_rows_only("):-1]
        # with_l2_prefetch(entry): also the row two ahead into L2 (forward
        # flag bit 8, backward bit 7; the default distance only).
        l2_bit = 0
        if line.startswith("with_l2_prefetch("):
            line = line[len("with_l2_prefetch("):-1]
            l2_bit = 256 if direction == "fwd" else 128
        # without_exact_rows(entry): the generic kernel also for exact rows
        # (the forward's flag bit 5).
        generic_only = line.startswith("without_exact_rows(")
        if generic_only:
            line = line[len("without_exact_rows("):-1]
        m = re.fullmatch(r"entry_of\((\w+),\s*(\d+)\)", line)
        if m:
            found = [e for e in _table_entries(direction, m.group(1)) if e[0] == int(m.group(2))]
            assert len(found) == 1, f"{name}: {line}"
            mx, cfg, shifted_map = found[0][:3]
            if generic_only:
                cfg = cfg[:6] + (cfg[6] | 32,)
            cfg = cfg[:6] + (cfg[6] | l2_bit,)
            out.append((mx, cfg, shifted_map, exact_only))
            continue
        # with_shifted_mapping(entry, tpr, bytes, cluster, stages, min_threads)
        # / with_staged_shifted_rows(entry): the mapping of the entry's shifted
        # rows (backward).
        shifted_map = None
        staged_shifted = line.startswith("with_staged_shifted_rows(")
        if staged_shifted:
            line = line[len("with_staged_shifted_rows("):-1]
        if line.startswith("with_shifted_mapping("):
            inner, _, tail = line[len("with_shifted_mapping("):].rpartition("}")
            shifted_map = tuple(int(v) for v in tail.strip(" ),").split(",")[-5:])
            line = inner + "}" + tail[:tail.index(",")]
        m = re.match(r"row_in_smem_entry\(([^)]*)\)", line)
        if m:
            f = [int(words.get(v.strip(), v.strip() or 0)) for v in m.group(1).split(",")]
            f += [0, 0, 0][len(f) - 4:]  # persistent, stages, min_threads
            mx, threads, bpt, cluster, persistent, stages, min_threads = f[:7]
            out.append((mx, (threads, bpt, 1, cluster, stages, min_threads, 3 if persistent else 2),
                        None, exact_only))
            continue
        # with_params_in_registers(entry): the short-row kernel (forward flag bit 6).
        params_regs = line.startswith("with_params_in_registers(")
        if params_regs:
            line = line[len("with_params_in_registers("):]
        from_cache = line.startswith("params_from_cache(")
        if from_cache:
            line = line[len("params_from_cache("):]
        smem_weight = line.startswith("with_smem_weight(")
        if smem_weight:
            line = line[len("with_smem_weight("):]
        prefetch = line.startswith("with_prefetch(")
        if prefetch:
            line = line[len("with_prefetch("):]
        m = re.match(r"(?:with_part_groups\()?\{([^}]*)\}(?:,\s*(\d+)\))?", line)
        if m:
            f = [int(words.get(v.strip(), v.strip())) for v in m.group(1).split(",")]
            f += [0, 1, 0, 0][len(f) - 6:] if len(f) < 10 else []
            mx, tpr, bpt, rows, cluster, stages, min_threads, persistent, acc = f[:9]
            part_groups = int(m.group(2) or 1)
            flag = (persistent | (4 if from_cache else 0) | (8 if prefetch else 0)
                    | (32 if generic_only else 0)
                    | ((64 if persistent else 192) if params_regs else 0) if direction == "fwd"
                    else acc | (part_groups << 1 if part_groups > 1 else 0) | (32 if prefetch else 0)
                    | (64 if smem_weight else 0))
            cfg = (tpr, bpt, rows, cluster, stages, min_threads, flag | l2_bit)
            if staged_shifted:
                shifted_map = (tpr, bpt, cluster, 1, min_threads)
            out.append((mx, cfg, shifted_map, exact_only))
            continue
        raise ValueError(f"{name}: entry not understood: {line}")
    assert out, f"no entries parsed from {name}"
    return out


def table_candidate(direction: str, dtype: str, row_bytes: int, shifted: bool = False,
                    fast_memory: bool = False, w32: bool = False):
    """The table's entry for rows of row_bytes, as a candidate ([] beyond the table);
    for shifted rows of a backward entry with a shifted mapping, that mapping (no
    prefetch, no partial groups, as shifted_backward_config makes it)."""
    for mx, cfg, shifted_map, exact_only in table_configs(direction, dtype, fast_memory, w32,
                                                          shifted):
        if exact_only and (shifted or row_bytes != mx):
            continue
        if row_bytes <= mx:
            if shifted and shifted_map:
                tpr, bpt, cluster, stages, min_threads = shifted_map
                cfg = (tpr, bpt, cfg[2], cluster, stages, min_threads, cfg[6] & 1)
            return [cfg]
    return []


def candidates(direction: str, row_bytes: int, grids=(1,), bwd_stages=(0, 1, 2),
               occupancy=False, acc_modes=(0,), fwd_stages=(0, 1, 2), part_groups=(1,),
               fwd_params=(0,), bwd_prefetch=False, fwd_prefetch=False):
    """(tpr, bytes_per_thread, rows, cluster, stages, min_threads, flag) tuples;
    flag: the forward's grid mode, the backward's accumulator place.
    grids: the forward's grid modes to try (1 persistent, 0 one CTA per rows);
    acc_modes: the backward's dweight/dbias accumulators (0 registers, 1 shared
    memory, then also at half the registers: twice the resident threads);
    bwd_stages / fwd_stages: staged rows to try (the backward's while they fit
    in 200 KiB; the forward stages only on persistent grids);
    part_groups: the backward's partial groups to try besides each candidate
    with accumulators in shared memory (flag acc | part_groups << 1);
    fwd_params: the one-pass forward's weight/bias places to try (0 shared
    memory, 4 L1/L2 after the reductions: flag bit 2);
    bwd_prefetch: also each backward candidate with accumulators in shared
    memory and no staged rows with its next row loaded into registers ahead
    (flag bit 5), and that with its weight in shared memory (bit 6);
    fwd_prefetch: also each persistent forward candidate without staged rows
    with its next row loaded into registers ahead (flag bit 3);
    occupancy: also fewer registers for more resident threads (forward on
    one-pass grids: 16-byte threads at 1536/2048 per SM, 32-byte at 1536;
    backward 16-byte threads in CTAs up to 1024, two CTAs per SM for CTAs of
    257-511 threads)."""
    out = []
    if direction == "fwd" and 2 in grids:
        out += row_in_smem_candidates(row_bytes)
        grids = tuple(g for g in grids if g not in (2, 3))
        if not grids:
            return out
    # The backward's 64-byte threads run at 128 registers (512 threads per
    # SM); session 11 found them the best for 8-512 KiB rows, which sweeps
    # of 16/32 bytes only had never offered.
    bpts = (16, 32, 64)
    max_cta = 1024 if direction == "fwd" else 512  # 64 / 128 registers per thread
    if occupancy and direction == "bwd":
        max_cta = 1024
    for bpt in bpts:
        for tpr_total in row_threads_options(row_bytes, bpt):
            cta_max = max_cta if bpt == 16 else min(max_cta, 512 if direction == "bwd" else 1024)
            clusters = [1] if tpr_total <= cta_max else [c for c in (2, 4, 8, 16)
                                                          if tpr_total // c <= cta_max]
            for cluster in clusters[:2]:
                tpr = tpr_total // cluster
                if tpr_total % cluster or (tpr > 32 and tpr % 32):
                    continue
                if cluster > 1 or tpr >= 128:
                    row_opts = [1] if cluster > 1 or tpr > 128 else [1, 2]
                else:
                    row_opts = [r for r in (2, 4, 8, 16, 32, 64, 128) if tpr * r in (128, 256)]
                stage_opts = fwd_stages if direction == "fwd" else bwd_stages
                for rows, stages in itertools.product(row_opts, stage_opts):
                    if direction == "bwd" and stages * 2 * tpr * rows * bpt > 200 * 1024:
                        continue
                    mins = [1024 if direction == "fwd" else 512]
                    if direction == "fwd" and bpt == 64:
                        mins.append(512)  # more registers: 64 bytes of bf16 spill at 64
                    if occupancy:
                        cta = tpr * rows
                        if direction == "fwd" and bpt == 16:
                            mins += [1536, 2048]
                        if direction == "fwd" and bpt == 32:
                            mins.append(1536)
                        if direction == "bwd" and 256 < cta < 512:
                            mins.append(2 * cta)
                        if direction == "bwd" and cta > 512:
                            mins = [cta]
                    if direction == "fwd":
                        for min_threads, persistent in itertools.product(mins, grids):
                            # Only a looping CTA stages rows ahead; more resident
                            # threads (--occupancy) are tried on one-pass grids.
                            if (persistent or stages == 0) and (not persistent or min_threads <= 1024):
                                for params in (fwd_params if not persistent else (0,)):
                                    out.append((tpr, bpt, rows, cluster, stages, min_threads,
                                                persistent | params))
                                if fwd_prefetch and persistent and stages == 0:
                                    out.append((tpr, bpt, rows, cluster, stages, min_threads, 9))
                        continue
                    for acc in acc_modes:
                        extra = [max(1024, 2 * tpr * rows)] if acc and tpr * rows <= 512 else []
                        # (A kernel whose shared memory does not fit declines: MISMATCH.)
                        for min_threads in mins + extra:
                            out.append((tpr, bpt, rows, cluster, stages, min_threads, acc))
                            if bwd_prefetch and acc and stages == 0:
                                out += [(tpr, bpt, rows, cluster, stages, min_threads, acc | f)
                                        for f in (32, 96)]
                            # Partials added in clusters of part groups (accumulators
                            # in shared memory, one-row CTAs, clusters of <= 8 CTAs).
                            for pg in part_groups:
                                if pg > 1 and acc and rows == 1 and cluster * pg <= 8:
                                    out.append((tpr, bpt, rows, cluster, stages, min_threads,
                                                1 | (pg << 1)))
    return out


def generate_sources(build_dir: Path, plan, chunk: int = 12):
    """Writes the .cu files instantiating every planned candidate and one
    binding file; returns the list of source paths."""
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = []
    decls = []
    regs = []
    for start in range(0, len(plan), chunk):
        part = plan[start:start + chunk]
        lines = ['#include "cuda/launch.cuh"', "namespace fastlayernorm::cuda::tune {"]
        for idx, c in part:
            tpr, bpt, rows, cluster, stages, min_threads, flag = c["cfg"]
            # The last field: the forward's grid mode (persistent), the
            # backward's accumulators in shared memory.
            # Forward: 0 one-pass, 1 persistent, 2 row in shared memory (one
            # pass), 3 row in shared memory, persistent.
            # Backward: bit 0 the accumulators in shared memory, (flag & 31) >> 1 the
            # partial groups (0: 1).
            # Forward bit 2 (4): a one-pass kernel's weight/bias from L1/L2
            # after the reductions (params_from_cache), not shared memory.
            persistent = (flag & 3 in (1, 3) or bool(flag & 8)) if c["dir"] == "fwd" else 1
            row_in_smem = c["dir"] == "fwd" and flag & 3 in (2, 3)
            params_in_smem = not (c["dir"] == "fwd" and flag & 4)
            acc_smem = flag & 1 if c["dir"] == "bwd" else 0
            # Backward bit 5 (32): the next row prefetched into registers
            # (prefetch_row); bits 1-4: the partial groups.
            part_groups = max(1, (flag & 31) >> 1) if c["dir"] == "bwd" else 1
            # Forward bit 3 (8): persistent, the next row prefetched into
            # registers (prefetch_row). (Bit 4, two cluster exchanges per row
            # instead of merged statistics, was tune v24's; dropped since.)
            prefetch = bool(flag & 32) if c["dir"] == "bwd" else bool(flag & 8)
            # Backward bit 6 (64): with bit 5, the weight in shared memory
            # (weight_in_smem).
            smem_weight = c["dir"] == "bwd" and bool(flag & 64)
            # Forward bit 5 (32): the generic kernel also where N fills the
            # mapping exactly (exact_rows false; by default those rows run on
            # the kernel compiled for that N).
            exact_rows = not (c["dir"] == "fwd" and flag & 32)
            ctype = DTYPES[c["dtype"]][0]
            wtype = "float" if c["w32"] else ctype
            shifted = "true" if c["shifted"] else "false"
            config = (f"KernelConfig{{{tpr * bpt * cluster}, {tpr}, {bpt}, "
                      f"{rows}, {cluster}, {stages}, {min_threads}, {'true' if persistent else 'false'}, "
                      f"{'true' if acc_smem else 'false'}, {'true' if row_in_smem else 'false'}, "
                      f"{part_groups}, {'true' if params_in_smem else 'false'}, "
                      f"{'true' if prefetch else 'false'}, {'true' if smem_weight else 'false'}}}")
            # Forward bit 6 (64): persistent, the next row ahead, weight/bias
            # widened into registers once per CTA (params_in_registers).
            # With bit 7 (128): one pass, a CTA per `rows` rows.
            if c["dir"] == "fwd" and flag & 64:
                config = (f"with_params_in_registers({config}, false)" if flag & 128
                          else f"with_params_in_registers({config})")
            if not exact_rows:
                config = f"without_exact_rows({config})"
            # Forward bit 8 (256), backward bit 7 (128): with the next row
            # prefetched into registers, also the row two ahead into L2
            # (with_l2_prefetch).
            if flag & (256 if c["dir"] == "fwd" else 128):
                config = f"with_l2_prefetch({config})"
            lines.append(f"struct Cfg{idx} {{ static constexpr KernelConfig config = {config}; }};")
            if c["dir"] == "fwd":
                lines.append(
                    f"void run{idx}(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, "
                    f"const at::Tensor& y, const at::Tensor& mean, const at::Tensor& rstd) {{\n"
                    f"  using T = {ctype};\n  using W = {wtype};\n"
                    f"  const auto p = make_forward_params<T, W, T>(x.const_data_ptr<T>(), "
                    f"w.const_data_ptr<W>(), b.const_data_ptr<W>(), y.mutable_data_ptr<T>(), "
                    f"mean.numel() ? mean.mutable_data_ptr<float>() : nullptr, x.size(0), "
                    f"static_cast<int>(x.size(1)), 1e-5f);\n"
                    f"  // false: the kernel cannot run on this GPU (its shared memory).\n"
                    f"  TORCH_CHECK((launch_forward_entry<T, W, {shifted}>(Cfg{idx}{{}}, p, "
                    f"at::cuda::getCurrentCUDAStream())), \"candidate not launchable here\");\n}}")
                decls.append(
                    f"void run{idx}(const at::Tensor&, const at::Tensor&, const at::Tensor&, "
                    f"const at::Tensor&, const at::Tensor&, const at::Tensor&);")
            else:
                lines.append(
                    f"void run{idx}(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, "
                    f"const at::Tensor& rstd, const at::Tensor& w, const at::Tensor& dx, "
                    f"const at::Tensor& dw, const at::Tensor& db) {{\n"
                    f"  using T = {ctype};\n  using W = {wtype};\n"
                    f"  BackwardParams<T, W> p{{dy.const_data_ptr<T>(), x.const_data_ptr<T>(), "
                    f"mean.const_data_ptr<float>(), w.const_data_ptr<W>(), "
                    f"nullptr, dx.mutable_data_ptr<T>(), nullptr, nullptr, x.size(0), "
                    f"static_cast<int>(x.size(1))}};\n"
                    f"  // Empty dw/db: dweight/dbias not requested (--bwd-dx-only).\n"
                    f"  TORCH_CHECK((launch_backward_entry<T, W, false, {shifted}>(Cfg{idx}{{}}, p, "
                    f"x.options().dtype(at::kFloat), dw.numel() ? dw.mutable_data_ptr<W>() : nullptr, "
                    f"db.numel() ? db.mutable_data_ptr<W>() : nullptr, "
                    f"at::cuda::getCurrentCUDAStream())), \"candidate not launchable here\");\n}}")
                decls.append(
                    f"void run{idx}(const at::Tensor&, const at::Tensor&, const at::Tensor&, "
                    f"const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, "
                    f"const at::Tensor&);")
            regs.append(f'  m.def("run{idx}", &fastlayernorm::cuda::tune::run{idx});')
        lines.append("}")
        path = build_dir / f"tune_{start // chunk:03d}.cu"
        path.write_text("\n".join(lines) + "\n")
        sources.append(str(path))
    # Operators (torch.ops.fastlayernorm_tune.runN), not a Python module: the
    # library then loads into any Python, so it can be built on another machine.
    binding = ["#include <torch/library.h>", "namespace fastlayernorm::cuda::tune {"]
    binding += decls
    binding += ["}", "TORCH_LIBRARY(fastlayernorm_tune, m) {"] + regs + ["}"]
    path = build_dir / "tune_binding.cpp"
    path.write_text("\n".join(binding) + "\n")
    sources.append(str(path))
    return sources


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    ap.add_argument("--dirs", default="fwd,bwd")
    ap.add_argument("--elements-log2", type=int, default=26)
    ap.add_argument("--build-dir", default="/tmp/fastlayernorm-tune")
    ap.add_argument("--out", default="tune.json")
    ap.add_argument("--rep-ms", type=float, default=30.0)
    ap.add_argument("--grids", default="1",
                    help="forward grid modes to try: 1 persistent, 0 one CTA per rows, 2 rows held "
                         "in shared memory, one CTA (cluster) per row, one-pass and "
                         "persistent (e.g. 1,0,2)")
    ap.add_argument("--bwd-stages", default="0,1,2", help="backward staged rows to try")
    ap.add_argument("--fwd-stages", default="0,1,2",
                    help="forward staged rows to try (persistent grids only)")
    ap.add_argument("--fwd-params", default="0",
                    help="one-pass forward: weight/bias places to try: 0 stashed in shared "
                         "memory, 4 from L1/L2 after the reductions (e.g. 0,4)")
    ap.add_argument("--acc-modes", default="0",
                    help="backward accumulators to try: 0 registers, 1 shared memory (e.g. 0,1)")
    ap.add_argument("--part-groups", default="1",
                    help="backward: CTA groups per cluster adding their dweight/dbias partials "
                         "in distributed shared memory, tried with shared-memory accumulators "
                         "(e.g. 1,2,4)")
    ap.add_argument("--bwd-prefetch", action="store_true",
                    help="backward: also the candidates with accumulators in shared memory and "
                         "no staged rows loading their next row into registers ahead (with the "
                         "weight in registers, and in shared memory)")
    ap.add_argument("--fwd-prefetch", action="store_true",
                    help="forward: also the persistent candidates without staged rows loading "
                         "their next row into registers ahead")
    ap.add_argument("--occupancy", action="store_true",
                    help="also try fewer registers per thread for more resident threads")
    ap.add_argument("--table", action="store_true",
                    help="time only the entry of the tables in csrc/cuda/kernel_config.h that "
                         "takes each size (the shipped kernel)")
    ap.add_argument("--fast-memory", action="store_true",
                    help="with --table: the tables of cards of faster memory (H200; "
                         "kernel_config.h's fast-memory tables) instead of the H100's")
    ap.add_argument("--configs", default="",
                    help="time these candidates at every size they hold instead of the sweep "
                         "(with --table: besides the tables' entries): ';'-separated tuples "
                         "tpr,bytes_per_thread,rows,cluster,stages,min_threads,flag[,N] (with N: "
                         "at that N only, for the dtypes whose rows fill more than half of it); "
                         "forward flag bits: 1 persistent, 2 row in shared memory, 4 weight/bias "
                         "from L1/L2, 8 next row prefetched, 32 the generic kernel also for rows "
                         "that fill the mapping exactly, 64 the short-row kernel (weight/bias in registers, "
                         "persistent, `stages` 0-2: 1-2 rows ahead), 64 + 128 that kernel one-pass, 256 with "
                         "8 also the row two ahead prefetched into L2; backward flag bits: 1 "
                         "accumulators in shared memory, 2-30 partial groups << 1, 32 next row "
                         "prefetched, 64 with 32 the weight in shared memory, 128 with 32 the "
                         "row two ahead into L2")
    ap.add_argument("--weight-fp32", action="store_true",
                    help="float32 weight/bias (and dweight/dbias) with 16-bit rows")
    ap.add_argument("--bwd-dx-only", action="store_true",
                    help="time the backward without dweight/dbias (no partial rows, no "
                         "finalize kernel): what the parameter gradients cost")
    ap.add_argument("--dry-run", action="store_true", help="list the candidates, build nothing")
    ap.add_argument("--fwd-no-stats", action="store_true",
                    help="the forward without storing mean/rstd (null pointers), as for a "
                         "forward whose backward will not run")
    ap.add_argument("--build-only", action="store_true", help="compile the candidates, time nothing")
    ap.add_argument("--prebuilt", action="store_true",
                    help="load the extension already built in --build-dir (e.g. compiled with "
                         "--build-only on a machine without a GPU) instead of building it")
    args = ap.parse_args()

    explicit = [tuple(int(v) for v in c.split(",")) for c in args.configs.split(";") if c.strip()]
    assert all(len(c) in (7, 8) for c in explicit), "--configs: tuples of 7 (or 8) integers"
    w32 = args.weight_fp32
    plan = []
    for d, dt, n in itertools.product(args.dirs.split(","), args.dtypes.split(","),
                                      [int(s) for s in args.sizes.split(",")]):
        esz = DTYPES[dt][1]
        vec = 16 // esz
        shifted = n % vec != 0  # rows off 16-byte boundaries: one chunk more
        row_bytes = (n + (vec - 1 if shifted else 0)) * esz
        grids = tuple(int(g) for g in args.grids.split(","))
        bwd_stages = tuple(int(g) for g in args.bwd_stages.split(","))
        fwd_stages = tuple(int(g) for g in args.fwd_stages.split(","))
        acc_modes = tuple(int(g) for g in args.acc_modes.split(","))
        part_groups = tuple(int(g) for g in args.part_groups.split(","))
        fwd_params = tuple(int(g) for g in args.fwd_params.split(","))
        if args.table or args.configs:
            cfgs = (table_candidate(d, dt, row_bytes, shifted, args.fast_memory, w32 and esz == 2)
                    if args.table else [])
            # 8 numbers: the candidate at that N only, for the dtypes it fits
            # closely (rows of more than half its capacity).
            cfgs += [c[:7] for c in explicit
                     if c[0] * c[1] * c[3] >= row_bytes
                     and (len(c) == 7 or (c[7] == n and c[0] * c[1] * c[3] < 2 * row_bytes))]
        else:
            cfgs = candidates(d, row_bytes, grids, bwd_stages, args.occupancy, acc_modes,
                              fwd_stages, part_groups, fwd_params, args.bwd_prefetch,
                              args.fwd_prefetch)
        for cfg in cfgs:
            plan.append({"dir": d, "dtype": dt, "N": n, "cfg": cfg, "shifted": shifted,
                         "w32": w32 and esz == 2})
    # One instantiation per distinct (dir, dtype, weight dtype, cfg, shifted):
    # N is a runtime argument.
    keys = {}
    for c in plan:
        keys.setdefault((c["dir"], c["dtype"], c["cfg"], c["shifted"], c["w32"]), len(keys))
    print(f"{len(plan)} measurements, {len(keys)} kernels", flush=True)
    if args.dry_run:
        for c in plan:
            print(c)
        return

    import torch
    from torch.utils.cpp_extension import load
    from triton.testing import do_bench

    unique = [(idx, {"dir": k[0], "dtype": k[1], "cfg": k[2], "shifted": k[3], "w32": k[4]})
              for k, idx in keys.items()]
    t0 = time.time()
    # The candidates a library was built for, kept beside it: runN means the
    # N-th of these, so --prebuilt must be given the same plan.
    manifest = Path(args.build_dir) / "plan.json"
    plan_text = json.dumps([[idx, c] for idx, c in unique], sort_keys=True)
    if args.prebuilt:
        if not manifest.is_file() or manifest.read_text() != plan_text:
            sys.exit(f"--prebuilt: {manifest} is missing or lists other candidates than these "
                     "arguments do (build again with --build-only and the same arguments)")
        torch.ops.load_library(str(Path(args.build_dir) / "fastlayernorm_tune.so"))
    else:
        sources = generate_sources(Path(args.build_dir), unique)
        # FASTLAYERNORM_PTXAS_VERBOSE=1 (as for setup.py): ptxas's registers
        # and spills of each candidate in the build's output (ptxas_report.py).
        ptxas_verbose = bool(os.environ.get("FASTLAYERNORM_PTXAS_VERBOSE"))
        load(name="fastlayernorm_tune", sources=sources,
             extra_include_paths=[str(REPO / "csrc")],
             extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr", "-std=c++17",
                                "-gencode=arch=compute_90,code=sm_90",
                                "-DFASTLAYERNORM_WITH_CUDA"]
             # Compile-time switches of an experiment (e.g. -DNAME=1), for an
             # A/B of builds that differ only in them.
             + os.environ.get("FASTLAYERNORM_TUNE_CFLAGS", "").split()
             + (["-Xptxas=-v"] if ptxas_verbose else []),
             extra_cflags=["-O3"], build_directory=args.build_dir, verbose=ptxas_verbose,
             is_python_module=False)
        manifest.write_text(plan_text)
        print(f"built {len(unique)} kernels in {time.time() - t0:.0f}s", flush=True)
    if args.build_only:
        return
    ext = torch.ops.fastlayernorm_tune

    torch.manual_seed(0)
    copy_src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    copy_dst = torch.empty_like(copy_src)
    copy_ms = do_bench(lambda: copy_dst.copy_(copy_src), rep=200, return_mode="median")
    copy_gbs = 2 * copy_src.numel() / copy_ms / 1e6
    del copy_src, copy_dst
    print(f"copy {copy_gbs:.0f} GB/s", flush=True)

    results = []
    groups = {}
    for c in plan:
        groups.setdefault((c["dtype"], c["N"], c["w32"]), []).append(c)
    for (dt, n, c_w32), cs in groups.items():
        tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dt]
        elements = 1 << (args.elements_log2 - (1 if dt == "fp32" else 0))
        rows = max(1, elements // n)
        x = torch.randn(rows, n, device="cuda", dtype=tdt)
        wdt = torch.float32 if c_w32 else tdt
        w = (1 + 0.1 * torch.randn(n, device="cuda")).to(wdt)
        b = (0.1 * torch.randn(n, device="cuda")).to(wdt)
        dy = torch.randn_like(x)
        # The reference: torch's layer_norm in float32 (and its autograd).
        xr = x.float().requires_grad_()
        wr = w.float().requires_grad_()
        br = b.float().requires_grad_()
        yr = torch.nn.functional.layer_norm(xr, [n], wr, br, 1e-5)
        yr.backward(dy.float())
        ref_y, ref_dx, ref_dw, ref_db = yr.detach(), xr.grad, wr.grad, br.grad
        del xr, yr
        mean = x.float().mean(-1)
        rstd = torch.rsqrt(x.float().var(-1, unbiased=False) + 1e-5)
        pairs = torch.stack([mean, rstd], 1)
        y = torch.empty_like(x)
        # Empty: the forward without its statistics (--fwd-no-stats).
        # The forward's statistics: (mean, rstd) pairs, rows x 2 (run<i>
        # takes the pairs' first column, of twice the numel behind it).
        m2 = torch.empty(0 if args.fwd_no_stats else 2 * mean.numel(), device="cuda")
        m2 = m2.view(-1, 2)[:, 0] if m2.numel() else m2
        r2 = torch.empty_like(m2)
        dx = torch.empty_like(x)
        # Empty: the backward without dweight/dbias (--bwd-dx-only).
        dw = torch.empty(0 if args.bwd_dx_only else n, device="cuda", dtype=wdt)
        db = torch.empty_like(dw)
        esz = x.element_size()
        for c in cs:
            idx = keys[(c["dir"], dt, c["cfg"], c["shifted"], c["w32"])]
            fn_raw = getattr(ext, f"run{idx}")
            if c["dir"] == "fwd":
                fn = lambda: fn_raw(x, w, b, y, m2, r2)  # noqa: E731
                nbytes = 2 * x.numel() * esz
                y.fill_(float("nan"))
            else:
                # The backward reads (mean, rstd) pairs (run<i>'s mean).
                fn = lambda: fn_raw(dy, x, pairs, rstd, w, dx, dw, db)  # noqa: E731
                nbytes = 3 * x.numel() * esz
                dx.fill_(float("nan"))
            try:
                fn()
                if c["dir"] == "fwd":
                    ok = bool(torch.allclose(y.float(), ref_y.float(), rtol=1e-2, atol=1e-2))
                else:
                    ok = bool(torch.allclose(dx.float(), ref_dx.float(), rtol=1e-2, atol=1e-2)
                              and (args.bwd_dx_only or (
                                  torch.allclose(dw.float(), ref_dw.float(), rtol=1e-2, atol=1e-1)
                                  and torch.allclose(db.float(), ref_db.float(), rtol=1e-2,
                                                     atol=1e-1))))
                ms = do_bench(fn, warmup=5, rep=args.rep_ms, return_mode="median")
            except Exception as e:  # a configuration that cannot launch here
                ms, ok = float("nan"), False
                print("  failed:", c, e, flush=True)
            frac = nbytes / ms / 1e6 / copy_gbs
            r = dict(c, cfg=list(c["cfg"]), ms=ms, frac=frac, ok=ok)
            results.append(r)
            print(f"{c['dir']} {dt}{'-w32' if c_w32 else ''} N={n} {c['cfg']} {ms * 1e3:.1f}us {100 * frac:.1f}% "
                  f"{'ok' if ok else 'failed' if math.isnan(ms) else 'MISMATCH'}", flush=True)
        del x, dy, y, dx
        torch.cuda.empty_cache()

    Path(args.out).write_text(json.dumps({"copy_gbs": copy_gbs, "results": results}, indent=1))
    print("\n==== best per shape (tpr, bytes/thread, rows, cluster, stages, min_threads, "
          "fwd: grid mode | bwd: acc_smem + 2 * part_groups)")
    best = {}
    for r in results:
        if not r["ok"] or math.isnan(r["ms"]):
            continue
        k = (r["dir"], r["dtype"], r["N"])
        if k not in best or r["ms"] < best[k]["ms"]:
            best[k] = r
    for k in sorted(best):
        r = best[k]
        print(f"{k[0]} {k[1]} N={k[2]}: {100 * r['frac']:.1f}% {r['cfg']}")


if __name__ == "__main__":
    sys.exit(main())
