"""Markdown model cards for the models and ensembles `mesoscan train` registers (rendered from their JSON)."""

from __future__ import annotations

INTENDED_USE = """\
A research and screening aid: it scores face crops from video for signs of face manipulation (deepfakes) so that
a person can decide what to look at more closely. A score is evidence to weigh, not proof: do not act against a
person on its output alone. Not meant for identifying people, for decisions made without human review, or for
any use the training data's terms forbid (see *Terms*)."""

FAILURE_MODES = """\
- **Compression and resizing.** MesoNet looks at mesoscopic detail that re-encoding, strong JPEG/H.264
  compression, blur and resampling change; scores shift on heavily compressed web video, and faces must be
  prepared with MesoScan's one resize method (centre crop, antialiased bilinear to 256×256).
- **Face size.** The training crops were mostly enlarged from small faces (median source width about 155 px);
  very small or very large faces, and crops that are not tight around the face, are less reliable.
- **Unseen manipulations.** The data predates many current face-swap, reenactment and diffusion methods;
  such fakes can score as real. Expect far weaker results on other datasets than on this validation split.
- **Pose, light and occlusion.** Profile views, dark or coloured lighting, glasses, masks, hands and heavy
  make-up are under-represented.
- **Optimistic validation.** The split keeps each source video (cluster) on one side, but the same actor can
  appear in several clusters, so the validation metrics somewhat overstate performance on new people.
- **Crop level only.** These metrics score single crops; a video verdict aggregates many crops and has its own
  error rates. Performance across demographic groups was not measured."""


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "—" if value is None else str(value)


def _metrics_table(m: dict) -> list[str]:
    c = m.get("confusion", {})
    return [
        "| metric | value |",
        "|---|---|",
        f"| ROC AUC | {_fmt(m.get('roc_auc'))} |",
        f"| equal error rate | {_fmt(m.get('eer'))} |",
        f"| accuracy at the threshold | {_fmt(m.get('accuracy'))} |",
        f"| crops (fake) | {m.get('n')} ({m.get('n_fake')}) |",
        f"| fakes called fake / real | {c.get('true_fake')} / {c.get('false_real')} |",
        f"| reals called real / fake | {c.get('true_real')} / {c.get('false_fake')} |",
    ]


def _data_section(meta: dict) -> list[str]:
    data = meta.get("data", {})
    split = data.get("split", {})
    lines = ["## Data", "", data.get("description", ""), ""]
    if data.get("data_dir"):
        lines += [
            f"- Folder: `{data['data_dir']}`"
            + (f" (labels.csv sha256 `{data['labels_csv_sha256']}`)" if data.get("labels_csv_sha256") else "")
        ]
    for side in ("train", "validation"):
        s = data.get(side)
        if s:
            lines.append(
                f"- {side.capitalize()}: {s['crops']} crops ({s['fake']} fake, {s['real']} real) "
                f"from {s['clusters']} clusters"
            )
    excluded = ", ".join(split.get("excluded_splits", [])) or "none"
    if data.get("rows"):
        lines.append(f"- labels.csv data rows used (1-based, train and validation together): {data['rows']}")
    elif split.get("rows"):
        lines.append(f"- labels.csv data rows used (1-based): {split['rows'][0]}-{split['rows'][1]}")
    lines += [
        f"- Rows of split(s) {excluded} in labels.csv were never used for training or validation.",
        "",
        "### Split",
        "",
        f"By cluster: a fake and the real video it was made from form one cluster, and whole clusters go to one "
        f"side. Validation fraction {split.get('val_fraction')} of the clusters, chosen by seed {split.get('seed')}"
        + (f" among at most {split['limit']} crops" if split.get("limit") else "")
        + f" (validation clusters sha256 `{split.get('val_clusters_sha256', '')[:16]}…`).",
        "",
    ]
    return lines


def _recipe(meta: dict) -> list[str]:
    """The Training section: the recorded config, the schedule and augmentation worded as the config words them."""
    from serving.training.config import augmentation_wording, schedule_wording

    training = meta.get("training", {})
    cfg = training.get("config", {})
    if not cfg:
        return []
    aug = augmentation_wording(cfg.get("augment", {}))
    schedule = schedule_wording(cfg)
    best = meta.get("metrics", {}).get("validation", {}).get("best_epoch")
    return [
        "## Training",
        "",
        f"- Architecture: {meta.get('arch')} (input RGB uint8 256×256, output P(fake))",
        f"- Epochs: {training.get('epochs_run')} run of at most {cfg.get('epochs')} "
        f"({training.get('steps_per_epoch')} steps each), best epoch {best} by validation ROC AUC, "
        f"early stopping patience {cfg.get('patience')}",
        *_start_lines(training),
        f"- Batch {cfg.get('batch_size')}, Adam, learning rate {cfg.get('learning_rate')}, {schedule}",
        f"- Augmentation: {', '.join(aug) or 'none'}",
        f"- Class weights: {cfg.get('class_weight')}; bfloat16 mixed precision: "
        f"{'yes' if cfg.get('mixed_precision') else 'no'}; seed {cfg.get('seed')}",
        f"- Software: {', '.join(f'{k} {v}' for k, v in training.get('versions', {}).items())}",
        _training_time(training),
        "",
    ]


def _start_lines(training: dict) -> list[str]:
    """Where a run that went on from another model's weights (`--init-from`) started, back to random weights."""
    start = training.get("init_from")
    if not start:
        return []
    total = training.get("epochs_total")
    lines = [
        f"- Started from the weights of {start['name']} v{start['version']} (sha256 {start['sha256'][:12]}…), "
        + (
            f"{start['epochs']} epochs before this run: {total} epochs in all"
            if start.get("epochs") is not None
            else "the authors' 2018 weights (their epochs unknown)"
        )
    ]
    while start:
        if start.get("command"):
            lines.append(f"  - {start['name']} v{start['version']}: `{start['command']}`")
        start = start.get("init_from")
    return lines


def _training_time(training: dict) -> str:
    """The epochs' own wall time: a run resumed across sessions spans several processes, so the last process'
    start and end say little."""
    seconds = sum(h.get("epoch_seconds", 0) for h in training.get("history", []))
    span = f"registered {training.get('finished')}; the last process started {training.get('started')}"
    if not seconds:
        return f"- Trained {training.get('started')} – {training.get('finished')}"
    return f"- Training time: {seconds / 60:.0f} min, the sum of the epochs' wall time ({span})"


def _verdict_section(meta: dict) -> list[str]:
    """Crop geometry, calibration and the `uncertain` band: how the scanner turns this model's output into labels."""
    lines = []
    crop = meta.get("crop")
    if crop:
        spread = f" (10th percentile {crop['p10']}, 90th {crop['p90']})" if "p10" in crop else ""
        lines += [
            "## Crop geometry",
            "",
            f"Faces are cut as squares of side **{crop['margin']}×** the longer side of BlazeFace's face box"
            f"{spread}, rotated upright on the eyes, then resized to 256×256. {crop.get('note', '')}",
            "",
        ]
        for name, margin in crop.get("members", {}).items():
            lines.append(f"- member {name}: margin {margin}")
        lines += [""] if crop.get("members") else []
    cal = meta.get("calibration")
    if cal:
        lines += [
            "## Calibration",
            "",
            f"Platt scaling fitted on the {cal.get('fitted_on', 'validation split')} ({cal.get('n')} crops): "
            f"P(fake) = sigmoid({cal['a']:.4f} · logit(p) + {cal['b']:.4f}), applied inside the model (every "
            f"backend and the exported SavedModel return the calibrated score; the threshold is on that "
            f"scale). Log loss {_fmt(cal.get('log_loss_before'))} → {_fmt(cal.get('log_loss_after'))}, "
            f"expected calibration error {_fmt(cal.get('ece_before'))} → {_fmt(cal.get('ece_after'))}. "
            "Calibration is monotone: ROC AUC and the ranking of faces are unchanged.",
            "",
        ]
    band = meta.get("band")
    if band:
        out = band["validation"]

        def share(side: dict) -> str:
            return "—" if side["precision"] is None else f"{side['precision']:.1%} of {side['n']}"

        lines += [
            "## Uncertain band",
            "",
            f"±{band['band']} around the threshold. Rule: {band['rule']}. Target "
            f"{band['target']:.0%} {'met' if band['target_met'] else '**not met**'}. On the validation crops:",
            "",
            "| label | right |",
            "|---|---|",
            f"| fake | {share(out['fake'])} |",
            f"| real | {share(out['real'])} |",
            f"| uncertain | {out['uncertain']['n']} crops ({out['uncertain']['share']:.1%}) |",
            "",
        ]
    return lines


def render_card(meta: dict) -> str:
    """The Markdown card of a registered model or ensemble, from its JSON metadata."""
    ensemble = meta.get("kind") == "ensemble"
    val = meta.get("metrics", {}).get("validation", {})
    lines = [
        f"# {meta['name']} (version {meta.get('version', '?')})",
        "",
        meta.get("description", ""),
        "",
        "| | |",
        "|---|---|",
    ]
    if ensemble:
        members = ", ".join(f"{m['name']} v{m['version']} ({m['arch']})" for m in meta.get("members", []))
        lines.append(f"| Kind | ensemble: mean fake probability of {members} |")
    else:
        lines.append(f"| Architecture | {meta.get('arch')} |")
    lines += [
        "| Output | P(fake), 0–1 |",
        f"| Threshold | {_fmt(meta.get('threshold'))}: called fake at or above it |",
        f"| Threshold rule | {meta.get('threshold_rule', '')} |",
        f"| Registered | {meta.get('registered', '')} |",
    ]
    if meta.get("weights"):
        lines.append(f"| Weights | `{meta['weights']}`, sha256 `{meta.get('sha256')}` |")
    lines += ["", "## Intended use", "", INTENDED_USE, ""]
    lines += _data_section(meta)
    if ensemble:
        lines += [
            "## Ensemble",
            "",
            "Members, each pinned by the sha256 of its weights (the ensemble refuses to load "
            "if a member is retrained):",
            "",
        ]
        lines += [f"- {m['name']} v{m['version']} ({m['arch']}), sha256 `{m['sha256']}`" for m in meta["members"]]
        lines.append("")
    else:
        lines += _recipe(meta)
    lines += _verdict_section(meta)
    lines += ["## Validation metrics", "", *_metrics_table(val), ""]
    members_val = meta.get("metrics", {}).get("members_validation")
    if members_val:
        lines += [
            "Members on the same validation crops, each at its own threshold:",
            "",
            "| member | ROC AUC | EER | accuracy |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {_fmt(m['roc_auc'])} | {_fmt(m['eer'])} | {_fmt(m['accuracy'])} |"
            for name, m in members_val.items()
        ]
        lines.append("")
    lines += [
        "## Known failure modes",
        "",
        FAILURE_MODES,
        "",
        "## Terms",
        "",
        meta.get("licence", ""),
        "",
        "## Provenance",
        "",
        meta.get("provenance", ""),
        "",
    ]
    command = meta.get("training", {}).get("command")
    if command:
        lines += ["## Reproduce", "", "```sh", command, "```", ""]
    again = meta.get("recalibrated", {}).get("command")
    if again:
        lines += [
            f"Calibration, band and crop geometry of version {meta.get('version')} (same weights as version "
            f"{meta['recalibrated'].get('from_version')}):",
            "",
            "```sh",
            again,
            "```",
            "",
        ]
    return "\n".join(lines)
