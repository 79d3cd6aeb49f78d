"""Summarizes `-Xptxas=-v` output of build logs (one or more paths): registers, stack and spills
per kernel (readable names), for docs/kernels.md."""
import re
import sys


def demangle_args(name: str) -> str:
    kind = re.search(r"(ln_\w+?_kernel)", name)
    ints = re.findall(r"Li(\d+)E", name)
    types = [t for t in ("BFloat16", "Half", "double", "float") if t in name]
    t = "bf16" if "BFloat16" in name else "f16" if "Half" in name else "f64" if "Ed" in name[:60] else "f32"
    w32 = "w32" if re.search(r"(BFloat16|Half)Ef", name) else ""
    label = kind.group(1) if kind else name[:40]
    if label == "ln_bwd_few_rows_kernel" and len(ints) >= 2:
        # <T, W, G, ITEMS, ROWS_PER_WARP, FROM_OUTPUT>; G float32 with 16-bit rows: autocast.
        g32 = "+g32" if re.search(r"(BFloat16|Half)E(f|S3_)fLi", name) else ""
        from_output = re.findall(r"Lb([01])E", name)[-1:] == ["1"]
        return (f"{label}<{t}{'+' + w32 if w32 else ''}{g32} items={ints[0]} "
                f"rows_per_warp={ints[1]}{' from_output' if from_output else ''}>")
    if label == "ln_fwd_short_rows_kernel" and len(ints) >= 6:
        # <T, W, O, VEC, ITEMS, TPR, ROWS, MIN_CTAS, AHEAD, EXACT>; O float32
        # with 16-bit rows: autocast.
        vec, items, tpr, rows, min_ctas, ahead = ints[:6]
        o32 = "+o32" if re.search(r"(BFloat16|Half)E(f|S3_)fLi", name) else ""
        exact = re.findall(r"Lb([01])E", name)[-1:] == ["1"]
        grid = "one_pass" if ahead == "0" else f"ahead={ahead}"
        return (f"{label}<{t}{'+' + w32 if w32 else ''}{o32} vec={vec} items={items} tpr={tpr} "
                f"rows={rows} min_ctas={min_ctas} {grid}{',exact' if exact else ''}>")
    if "row_in_smem" in label and len(ints) >= 6:
        # <T, W, O, VEC, ITEMS, THREADS, CLUSTER, MIN_CTAS, STAGES, SHIFTED, PERSISTENT>
        vec, items, threads, cluster, min_ctas, stages = ints[:6]
        flags = re.findall(r"Lb([01])E", name)
        on = [n for n, f in zip(["shifted", "persistent"], flags) if f == "1"]
        if stages != "0":
            on.insert(0, f"stages={stages}")
        return (f"{label}<{t}{'+' + w32 if w32 else ''} vec={vec} items={items} threads={threads} "
                f"cluster={cluster} min_ctas={min_ctas}{' ' + ','.join(on) if on else ''}>")
    if len(ints) >= 6:
        # <..., VEC, ITEMS, TPR, ROWS, CLUSTER, [PART_GROUPS: backward], MIN_CTAS,
        # STAGES, bools, L2_AHEAD>: forward shifted, persistent, (params in
        # shared memory: not shown), prefetch, exact; backward acc_smem,
        # from_output, shifted, prefetch, smem_weight.
        bwd = "bwd" in label
        vec, items, tpr, rows, cluster = ints[:5]
        part_groups = ints[5] if bwd else "1"
        rest = ints[6:] if bwd else ints[5:]
        min_ctas = rest[0] if rest else "?"
        stages = rest[1] if len(rest) > 1 else "0"
        l2_ahead = rest[2] if len(rest) > 2 else "0"  # (the last template argument)
        flags = re.findall(r"Lb([01])E", name)
        names = (["acc_smem", "from_output", "shifted", "prefetch", "smem_weight"] if bwd
                 else ["shifted", "persistent", "", "prefetch", "exact"])
        on = [n for n, f in zip(names, flags) if f == "1" and n]
        if bwd and "prefetch" in on and ("shifted" in on or stages != "0"):
            on.remove("prefetch")  # the kernel ignores it there (backward.cuh kPrefetch)
        if stages != "0":
            on.insert(0, f"stages={stages}")
        if part_groups != "1":
            on.insert(0, f"part_groups={part_groups}")
        if l2_ahead != "0":
            on.append(f"l2_ahead={l2_ahead}")
        return (f"{label}<{t}{'+' + w32 if w32 else ''} vec={vec} items={items} tpr={tpr} "
                f"rows={rows} cluster={cluster} min_ctas={min_ctas}"
                f"{' ' + ','.join(on) if on else ''}>")
    return f"{label}<{t}{'+' + w32 if w32 else ''}>"


def main(paths) -> None:
    cur, arch, stack, spill_st, spill_ld = None, None, "0", "0", "0"
    rows = []
    lines = [line for path in paths for line in open(path, errors="replace")]
    for line in lines:
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'", line)
        if m:
            cur, arch = m.group(1), m.group(2)
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            stack, spill_st, spill_ld = m.groups()
        m = re.search(r"Used (\d+) registers", line)
        if m and cur:
            rows.append((arch, demangle_args(cur), int(m.group(1)), stack, spill_st, spill_ld))
            cur = None
    seen = set()
    print(f"{'arch':6} {'regs':>4} {'stack':>5} {'spill st/ld':>11}  kernel")
    for arch, name, regs, stack, st, ld in sorted(rows):
        if (arch, name) in seen:
            continue
        seen.add((arch, name))
        print(f"{arch:6} {regs:4d} {stack:>5} {st + '/' + ld:>11}  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
