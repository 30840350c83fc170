"""The shipped model's card: Markdown rendered from `model_card.json`, and the README's results.

`benchmarks/model_card.py` measures the numbers and writes the JSON; everything a person reads
is rendered from it here, so no figure is typed by hand.
"""
from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
CARD_JSON = MODELS_DIR / "model_card.json"
README_START = "<!-- results:start (rendered from fer_edge/models/model_card.json by benchmarks/model_card.py) -->"
README_END = "<!-- results:end -->"


def load_card(path: Path = CARD_JSON) -> dict:
    return json.loads(Path(path).read_text())


def shipped_sha256() -> str | None:
    """The sha256 the model card records for the shipped int8 model, if a card ships."""
    return load_card()["files"]["int8"]["sha256"] if CARD_JSON.is_file() else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def results_table(card: dict) -> str:
    """Float vs int8 (and the comparison rows) on PrivateTest, with the leakage-free score."""
    lines = ["| model | PrivateTest acc | leakage-free acc | weighted F1 | macro F1 | size | 1-thread latency |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in card["comparison"]:
        size = f"{row['size_bytes'] / 1e6:.2f} MB" if row.get("size_bytes") else "–"
        latency = f"{row['latency_ms']:.2f} ms" if row.get("latency_ms") is not None else "–"
        free = _pct(row["leakage_free_accuracy"]) if row.get("leakage_free_accuracy") is not None else "–"
        lines.append(f"| {row['name']} | {_pct(row['accuracy'])} | {free} | {row['f1_weighted']:.3f} | "
                     f"{row['f1_macro']:.3f} | {size} | {latency} |")
    return "\n".join(lines)


def per_class_table(card: dict) -> str:
    float_pc, int8_pc = card["per_class"]["float"], card["per_class"]["int8"]
    lines = ["| class | float precision | float recall | int8 precision | int8 recall | support |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, f in float_pc.items():
        q = int8_pc[name]
        lines.append(f"| {name} | {f['precision']:.3f} | {f['recall']:.3f} | {q['precision']:.3f} | "
                     f"{q['recall']:.3f} | {f['support']} |")
    return "\n".join(lines)


def ferplus_table(card: dict) -> str:
    """FER2013 scores beside FER+ scores and where FER+-neutral faces go, per model and option."""
    rows = card["ferplus"]["rows"]
    lines = [f"| PrivateTest | FER2013 acc | FER2013 macro F1 | FER+ acc | FER+ macro F1 | FER+-neutral → neutral "
             f"| → negative | → sad |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {_pct(r['accuracy'])} | {r['f1_macro']:.3f} | {_pct(r['ferplus_accuracy'])} | "
                     f"{r['ferplus_f1_macro']:.3f} | {_pct(r['neutral_predicted_neutral'])} | "
                     f"{_pct(r['neutral_predicted_negative'])} | {_pct(r['neutral_predicted_sad'])} |")
    return "\n".join(lines)


def ferplus_section(card: dict) -> str:
    """The FER+ view of the results, when the card has one (cards measured before it have none)."""
    if not card.get("ferplus"):
        return ""
    plus, rows = card["ferplus"], card["ferplus"]["rows"]
    calibration = ("" if not plus["calibration_file"] else
                   f" The calibrations (`{plus['calibration_file']}`, beside the model) were fitted on PublicTest by "
                   "`fer-edge calibrate` and are off unless asked for (`--calibration NAME`).")
    return f"""
## FER+ view (PrivateTest)

{plus['protocol']} {rows[0]['ferplus_images']:,} PrivateTest images have a FER+ majority label;
{rows[0]['neutral_images']} are FER+-neutral.{calibration}

{ferplus_table(card)}
"""


def edgetpu_section(card: dict) -> str:
    """The Edge TPU op map of the int8 file (by Coral's supported-ops table), when the card has one."""
    tpu = card.get("edgetpu")
    if not tpu:
        return ""
    verdict = (f"all {tpu['ops']} ops are int8 and in Coral's supported table, so `edgetpu_compiler` can map the "
               "whole graph to the Edge TPU" if tpu["cut_at"] is None else
               f"{tpu['mapped']} of {tpu['ops']} ops would map; the compiler cuts the graph at {tpu['cut_at']} "
               f"({', '.join(tpu['unsupported'])} is not supported) and runs the rest on the CPU")
    restricted = (f" Mapped only under conditions: {', '.join(tpu['restricted'])}." if tpu["restricted"] else "")
    ops = ", ".join(f"{name} ×{n}" for name, n in sorted(tpu["op_counts"].items(), key=lambda item: -item[1]))
    return f"""
Edge TPU (`fer-edge inspect --target edgetpu`): {verdict}.{restricted} Ops: {ops}.
"""


def targets_table(card: dict) -> str:
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for t in card["targets"]:
        lines.append(f"| {t['name']} | {t['goal']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines)


def readme_results(card: dict) -> str:
    drop = card["int8_vs_float"]
    return "\n".join([
        README_START,
        f"Shipped model `{card['files']['int8']['file']}` ({card['architecture']['summary']}); "
        f"FER2013 PrivateTest, {card['data']['report_images']:,} images, selected on PublicTest. "
        f"Measured by `{card['command']}` on {card['measured_on']}.",
        "",
        results_table(card),
        "",
        f"int8 vs float: accuracy {drop['accuracy_drop_points']:+.2f} points, macro F1 "
        f"{drop['f1_macro_drop']:+.4f} (positive = int8 lower), top-1 agreement {_pct(drop['agreement'])}.",
        "",
        targets_table(card),
        README_END,
    ])


def flip_cost(card: dict) -> str:
    latency = card["latency_ms_1thread"]
    if "int8_classify_flip" not in latency:
        return ""
    return (f" (`--tta flip`; one-thread `classify()` {latency['int8_classify_flip']:.2f} ms a face against "
            f"{latency['int8_classify']:.2f} ms single pass)")


def markdown(card: dict) -> str:
    """The whole model card as Markdown."""
    tr, arch, data = card["training"], card["architecture"], card["data"]
    files = "\n".join(f"| {role} | `{f['file']}` | {'yes' if f['shipped'] else 'no: rebuild with `fer-edge convert RUN --float`'} "
                      f"| {f['size_bytes']:,} | `{f['sha256']}` |" for role, f in card["files"].items())
    return f"""# Model card: {card['name']}

Version {card['version']}. Rendered from `model_card.json`, which `{card['command']}` measured on
{card['measured_on']}.

## Files

| role | file | in the package | bytes | sha256 |
|---|---|---|---:|---|
{files}

The int8 file is full-integer (int8 input and output, every op int8, fixed batch 1) and carries its
metadata (classes, tensor quantization, preprocessing) as an embedded `fer_edge.json`.
`fer-edge predict --sha256 HASH` verifies a file before loading it.

## Model

{arch['summary']}: {arch['params']:,} parameters, {arch['macs'] / 1e6:.0f} M multiply-accumulates per face.
Input: one 48×48 grayscale face, preprocessing `{json.dumps(card['preprocessing'])}`
(a raw pixel p enters the int8 model as p − 128). Output: probabilities of
{', '.join(card['class_names'])}.

## Data and protocol

{data['dataset']}: trained on Training ({data['train_images']:,} images), model and epoch selected on
PublicTest, reported on PrivateTest ({data['report_images']:,} images). Leakage-free PrivateTest drops the
{data['leaked_images']} test images whose exact pixels occur in Training.

## Training

Float: {tr['float']['summary']}; {tr['float'].get('schedule', f"{tr['float']['epochs_run']} epochs")}; best
PublicTest accuracy at epoch {tr['float']['best_epoch']}. Quantization-aware fine-tuning: {tr['qat']['summary']}; {tr['qat']['epochs_run']}
epochs, best at epoch {tr['qat']['best_epoch']}. Then `fer-edge convert --int8`.

## Results (PrivateTest)

{results_table(card)}

Per class:

{per_class_table(card)}

int8 vs float: accuracy {card['int8_vs_float']['accuracy_drop_points']:+.2f} points, macro F1
{card['int8_vs_float']['f1_macro_drop']:+.4f}, top-1 agreement {_pct(card['int8_vs_float']['agreement'])}.
With horizontal-flip test-time averaging the int8 model scores {_pct(card['int8_tta_flip_accuracy'])}{flip_cost(card)}.

![int8 confusion matrix on PrivateTest](confusion_matrix_int8.png)
{edgetpu_section(card)}
Targets:

{targets_table(card)}

{card['gap_note']}
{ferplus_section(card)}
## Intended uses

Research, prototyping and aggregate, opt-in feedback (e.g. "how did the room react to this
slide", a robot's expressive response, HCI studies with consenting participants), on a device,
without storing or sending images.

## Limitations and cautions

- **What it measures.** The model labels the visible facial configuration with one of seven
  stereotyped categories. An emotion inferred from a face is not a person's inner state; people
  express the same feeling differently and show expressions they do not feel. The output must not
  drive decisions about people: hiring, grading, policing, access, pricing, health or
  any judgement of an individual.
- **Data biases.** FER2013 was gathered by web image search: mostly posed or staged, frontal
  faces of adults; skewed in age, ethnicity and gender in ways that were never audited; with
  labelling noise (FER+ relabels about a third of it) and duplicates. Accuracy differs by group,
  and we have not measured by how much.
- **Imbalance.** Disgust has 436 training images against 7,215 for happy; its recall and that
  of fear are the weakest (see the table above).
- **Cross-dataset drop.** Accuracy measured on FER2013 does not carry over to other cameras,
  lighting, head poses, ages or cultures; expect a large drop on in-the-wild video. Validate on
  your own data before relying on any number.
- **Pipeline.** The face detector misses small, profile or occluded faces, and a poor crop
  changes the label.
"""


def replace_readme_section(readme: str, card: dict) -> str:
    start, end = readme.index(README_START), readme.index(README_END) + len(README_END)
    return readme[:start] + readme_results(card) + readme[end:]
