"""parity.json (for machines) and parity.md (for people) from the comparisons of one run."""

from __future__ import annotations

import json
from pathlib import Path

from vit_porting.parity.compare import OutputComparison
from vit_porting.safety import write_text_atomic


def runtime_summary(runtime: str, device: str, comparisons: list[OutputComparison]) -> dict:
    failing = [c for c in comparisons if not c.passed]
    attention = [c for c in comparisons if c.kind == "attention"]
    head = next((c for c in comparisons if c.kind in ("logits", "features")), None)
    return {
        "runtime": runtime,
        "device": device,
        "passed": not failing,
        "head_output": head.output if head else None,
        "head_max_abs_diff": head.max_abs_diff if head else None,
        "head_max_normalized_diff": head.max_normalized_diff if head else None,
        "top1_agreement": head.top1_agreement if head else None,
        "top5_agreement": head.top5_agreement if head else None,
        "attention_maps": len(attention),
        "attention_worst_normalized_diff": max((c.max_normalized_diff for c in attention), default=None),
        "attention_worst_output": max(attention, key=lambda c: c.max_normalized_diff).output if attention else None,
        "failing_outputs": [c.output for c in failing],
        "outputs": [c.to_dict() for c in comparisons],
    }


def fmt_float(x: float | None) -> str:
    """A difference in the reports and cards: two significant digits, or a dash."""
    return "—" if x is None else f"{x:.2e}"


def fmt_share(x: float | None) -> str:
    """An agreement rate in the reports and cards: a whole percentage, or a dash."""
    return "—" if x is None else f"{x:.0%}"



def _notes(r: dict) -> str:
    notes = []
    if r.get("mode"):
        notes.append("eager" if r["mode"] == "eager" else f"compiled: {r['mode']}")
    if r.get("provider"):
        notes.append(r["provider"])
    if r.get("device_name"):
        notes.append(r["device_name"])
    return ", ".join(notes) or "—"


def _runtime_legend(report: dict) -> list[str]:
    lines = [""]
    lines += [f"- **{r['runtime']}** ({r['device']}): {r['loads']}" for r in report["runtimes"] if r.get("loads")]
    devices = report.get("devices") or {}
    if devices:
        gpu = (f"CUDA: {devices.get('cuda_device_name')}" if devices.get("cuda")
               else "CUDA: not available on this machine (GPU runtimes skipped)")
        lines.append(f"- Devices: CPU; {gpu}.")
    for skipped in report.get("skipped", []):
        lines.append(f"- Skipped {skipped['runtime']} on {skipped['device']}: {skipped['reason']}")
    photos = (report.get("inputs_detail") or {}).get("photos")
    if photos:
        lines.append(f"- Photographs ({photos['source']}): {', '.join(photos['names'])}.")
    return lines


def _timing_text(timing: dict | None) -> str:
    """'batch 1: a 12.3 ms, b 10.1 ms; batch 8: ...' from a ``vit_porting.export.timing.choose_fastest`` record."""
    if not timing:
        return ""
    return "; ".join(f"batch {batch}: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in row.items())
                     for batch, row in timing["median_ms"].items())


def serving_lines(exports: dict) -> list[str]:
    """How the serving graphs of the SavedModel and of model.onnx were chosen, with the times measured."""
    lines = []
    serving = (exports.get("saved_model") or {}).get("serving")
    if serving:
        timing = _timing_text(serving.get("timing"))
        lines.append(f"- `serving_default` and `features` run as **{serving['graph']}** ({serving['chosen_by']}"
                     + (f"; median of {serving['timing']['repeats']} alternated calls: {timing}" if timing else "")
                     + (f"; {serving['xla_error']}" if serving.get("xla_error") else "")
                     + "); `attention` is the plain graph.")
    onnx = (exports.get("onnx") or {}).get("serving")
    if onnx:
        tried = []
        for name, c in onnx["candidates"].items():
            if "skipped" in c:
                tried.append(f"{name} (not made: {c['skipped']})")
            elif "parity" in c:
                extra = ", ".join([*(f"{k} x{v}" for k, v in (c.get("rewrites") or {}).items()),
                                   *(f"{k} x{v}" for k, v in (c.get("fusions") or {}).items())])
                tried.append(f"{name} ({c['nodes']} nodes{', ' + extra if extra else ''}; logits "
                             f"{fmt_float(c['parity']['max_normalized_diff'])} normalised, "
                             f"{'within' if c['parity']['passed'] else 'OUTSIDE'} the fp32 tolerance)")
            else:
                tried.append(f"{name} (checker: {c.get('checker')})")
        contrib = onnx.get("non_standard_ops") or {}
        lines.append(f"- `model.onnx` is the **{onnx['graph']}** graph ({onnx['chosen_by']}; "
                     f"{_timing_text(onnx.get('timing'))}). Candidates: {'; '.join(tried)}."
                     + (f" It uses ONNX Runtime contrib ops ({', '.join(contrib)}): any ONNX Runtime loads it and "
                        "onnx.checker passes it, other ONNX runtimes may not run it; `model_attention.onnx` is "
                        "standard ONNX." if contrib else ""))
    return lines


def _exports_section(report: dict) -> list[str]:
    exports = report.get("exports")
    if not exports:
        return []
    lines = ["", "## Artifacts", ""]
    sm = exports.get("saved_model")
    if sm:
        lines.append(f"- `saved_model/` (signatures `serving_default`, `features`, `attention`; input `images` NHWC): "
                     f"{sm['bytes'] / 1e6:.1f} MB, {sm['size_ratio']:.3f}x the weight bytes "
                     f"({sm['weight_bytes'] / 1e6:.1f} MB).")
    if exports.get("keras"):
        lines.append(f"- `model.keras`: {exports['keras']['bytes'] / 1e6:.1f} MB.")
    onnx = exports.get("onnx")
    if onnx:
        lines.append(f"- `model_attention.onnx` (torch.onnx dynamo from model.safetensors): opset {onnx['opset']}, "
                     f"{onnx['nodes']} nodes, {onnx['bytes'] / 1e6:.1f} MB"
                     + (", external data" if onnx.get("external_data") else "") + ".")
    lines += serving_lines(exports)
    for name, v in (exports.get("variants") or {}).items():
        lines.append(f"- `{v['file']}` ({name}): {v['method']}.")
    return lines


def variants_table(report: dict) -> list[str]:
    """The reduced-precision and LiteRT variants: agreement with the fp32 reference, not parity."""
    rows = report.get("variants")
    if not rows:
        return []
    lines = ["| variant | file | top-1 (seeded) | top-5 (seeded) | top-1 (photos) | top-5 (photos) "
             "| probabilities max abs Δ | probabilities mean abs Δ | logits normalised | publish floor |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeded, photos = r["random"], r.get("photos") or {}
        worst = max((m.get("prob_max_abs_diff") or 0.0) for m in (seeded, photos) if m)
        mean = max((m.get("prob_mean_abs_diff") or 0.0) for m in (seeded, photos) if m)
        normalised = max(m.get("max_normalized_diff", float("inf")) for m in (seeded, photos) if m)
        lines.append(f"| {r['variant']} | `{r['file']}` | {fmt_share(seeded.get('top1_agreement'))} "
                     f"| {fmt_share(seeded.get('top5_agreement'))} | {fmt_share(photos.get('top1_agreement'))} "
                     f"| {fmt_share(photos.get('top5_agreement'))} | {fmt_float(worst)} | {fmt_float(mean)} "
                     f"| {fmt_float(normalised)}{' (within fp32 tolerance)' if r['within_fp32_tolerance'] else ''} "
                     f"| {'met' if r['meets_publish_floor'] else '**below**'} |")
    floor = ", ".join(f"{measure.replace('_', ' ')} on the {inputs} ≥ {bound:.0%}"
                      for inputs, bounds in (rows[0].get("publish_floor") or {}).items()
                      for measure, bound in bounds.items())
    lines += ["", f"Agreement with the PyTorch fp32 reference's `{rows[0]['head_output']}` on the same inputs; "
              "|Δ| of the softmax probabilities (the worse of the seeded batch and the photographs). These files "
              f"are extras beside the fp32 artifacts and do not decide the verdict. Publish floor: {floor or 'none'}"
              " (a variant below it on a port of trained weights is not published)."]
    if report.get("random_weights"):
        lines.append("With random weights the class scores are near ties: agreement on them says little about "
                     "a trained model's accuracy.")
    return lines


def _steps_section(report: dict) -> list[str]:
    steps = report.get("steps")
    if not steps:
        return []
    lines = ["", "| step | seconds | peak RSS of its process (MB) |", "|---|---|---|"]
    lines += [f"| {name} | {t['seconds']:.1f} | {t['peak_rss_mb'] or 0:.0f} |" for name, t in steps.items()]
    return lines


def render_markdown(report: dict) -> str:
    lines = [f"# Parity report: {report['variant']}", ""]
    if report.get("random_weights"):
        lines += ["> **Random weights.** This port was made from randomly initialised (perturbed) weights, "
                  "not a trained checkpoint: it proves the conversion, not accuracy.", ""]
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines += [f"**Verdict: {verdict}** (reference: {report['reference']}, inputs: {report['inputs']})", "",
              f"Weights: {report['origin']['description']}", "",
              "Metric: max |candidate − reference| / max |reference| per output; tolerances from "
              "`vit_porting/parity/tolerances.yaml`.", "",
              "Top-1/top-5: agreement of the runtime's top classes with the reference's, on the seeded "
              "random batch and on the sample photographs.", "",
              "| runtime | device | verdict | logits max abs | logits normalised | tol | top-1 | top-5 "
              "| attention maps | worst attention (normalised) | photos normalised | photos top-1 | photos top-5 "
              "| notes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runtimes"]:
        head = next((o for o in r["outputs"] if o["output"] == r["head_output"]), {})
        photos = r.get("photos") or {}
        lines.append(
            f"| {r['runtime']} | {r['device']} | {'pass' if r['passed'] else '**FAIL**'} "
            f"| {fmt_float(r['head_max_abs_diff'])} | {fmt_float(r['head_max_normalized_diff'])} "
            f"| {fmt_float(head.get('tolerance'))} "
            f"| {fmt_share(r['top1_agreement'])} | {fmt_share(r['top5_agreement'])} "
            f"| {r['attention_maps']} | {fmt_float(r['attention_worst_normalized_diff'])} "
            f"({r['attention_worst_output'] or '—'}) "
            f"| {fmt_float(photos.get('max_normalized_diff'))} | {fmt_share(photos.get('top1_agreement'))} "
            f"| {fmt_share(photos.get('top5_agreement'))} | {_notes(r)} |")
    lines += _runtime_legend(report)
    for r in report["runtimes"]:
        if r["passed"]:
            continue
        lines += ["", f"## {r['runtime']}: out of tolerance", ""]
        loc = r.get("localisation")
        if loc:
            lines += [f"First diverging block: **{loc['block']}**. Mapping rules that feed it:", ""]
            lines += [f"- line {rule['line']}: `{rule['from']}` → `{rule['to']}` ({rule['transform']})"
                      for rule in loc["rules"]]
            lines.append("")
        lines += ["| output | max abs | normalised | tolerance |", "|---|---|---|---|"]
        lines += [f"| {o['output']} | {fmt_float(o['max_abs_diff'])} | {fmt_float(o['max_normalized_diff'])} "
                  f"| {fmt_float(o['tolerance'])} |" for o in r["outputs"] if not o["passed"]][:40]
    if report.get("variants"):
        lines += ["", "## Reduced-precision and LiteRT variants (agreement, not parity)", "", *variants_table(report)]
    lines += _exports_section(report) + _steps_section(report)
    if report.get("roundtrip"):
        rt = report["roundtrip"]
        lines += ["", f"Round trip (Keras → {report['source_layout']} safetensors → strict load): "
                  f"{'bit-exact' if rt.get('bit_exact') else 'MISMATCH'} over {rt.get('num_tensors')} tensors"
                  + (f"; {rt['not_compared']} dropped by the mapping on purpose, not compared "
                     f"({'; '.join(rt.get('not_compared_reasons', []))})" if rt.get("not_compared") else "")
                  + "."]
    lines += ["", f"Generated {report['time']} by vit-porting {report['toolkit_version']}.", ""]
    return "\n".join(lines)


def write_reports(report: dict, folder: Path) -> None:
    """Renamed into place: a re-check rewrites them in a folder whose files may be hard-linked
    into a staging folder, which must not change with them."""
    write_text_atomic(folder / "parity.json", json.dumps(report, indent=1))
    write_text_atomic(folder / "parity.md", render_markdown(report))
