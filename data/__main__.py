"""``python -m data SUBCOMMAND``: data tools.

  synth    write the synthetic VQA / grounding / document corpus (LLaVA JSON + PNG images)
  check    PATH [--format F] [--image-root DIR] [--video-root DIR] [--decode] [--out DIR]
           read a data file in any source format and open every image header (and probe every
           video), reporting each sample training would reject and why; or
           CONFIG.yaml [key=value ...] [--model PATH] [--decode] [--out DIR]: the config's data
           read and planned exactly as training reads it (same reasons). --decode also decodes
           every image and video (finds truncated JPEGs and undecodable frames). --out writes
           DIR/bad_samples.jsonl. Exit 0: all good; 1: some samples are bad.
  convert  PATH --format F [--image-root DIR] [--video-root DIR] --out FILE.jsonl
           write any readable source as our canonical messages JSONL (content parts, media
           paths made absolute); samples that cannot be read are reported, not written
  stats    CONFIG [key=value ...] --out DIR [--model PATH] [--limit N]
           per source and in total: samples, bad samples per reason, text / visual / total
           token percentiles (p50/p90/p99/max, planned from media headers, no pixel decoding),
           images and videos per sample, budget hits (samples over data.max_seq_len or
           data.max_visual_tokens and how many data.over_budget shrinks or drops; images scaled
           down by max_pixels or up by min_pixels). Writes DIR/stats.json,
           DIR/bad_samples.jsonl and DIR/hist_{text,visual,total}_tokens.png.
  show     CONFIG [key=value ...] --out DIR [--model PATH] [--n 5 | --ids A,B] [--source NAME]
           [--print]   encode samples as training gets them and write, per sample,
           DIR/<k>_<id>.txt (the encoded ids decoded back to text, visual pad runs collapsed to
           "<|image_pad|>x64 (grid 1x16x16)", trained tokens between [[ and ]]),
           DIR/<k>_<id>_img<j>.png (each image as the model sees it, rebuilt from pixel_values,
           with the answers' bbox_2d / point_2d drawn) and DIR/<k>_<id>_video<j>.png (frames);
           DIR/show.json lists them. --print also prints the texts (coloured on a terminal).
  prepare  CONFIG [key=value ...] --out DIR [--model PATH] [--num-proc N]
           pre-encode every sample into a datasets Arrow dataset (DIR/dataset; training reads it
           with data.prepared=DIR, code with data.prepared.PreparedDataset), DIR/bad_samples.jsonl
           (samples that failed to read, fit the budget or encode) and DIR/manifest.json (config,
           processor, counts; a stale cache is refused by training).

CONFIG is a training config (its ``data:`` section is read; ``model.path`` is the default
``--model``) or a file holding only a data section. Overrides use the file's own keys
(``data.max_seq_len=2048`` for a training config; ``max_seq_len=2048`` for a data section).
--model is a checkpoint folder; its processor is loaded with AutoProcessor.from_pretrained.

Exit codes of stats / show / prepare: 0 done; 1 more than data.max_bad_fraction of the samples
are bad (training would stop on this data) or a requested sample was not found; 2 bad config or
model path; 3 a source cannot be read at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any


def load_tool_config(path: str, overrides: list[str], model: str | None):
    """(DataConfig, processor path) from a training config or a bare data section."""
    import yaml

    from data.config import DataConfig
    from data.configio import ConfigError, load_config

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    raw = yaml.safe_load(file.read_text()) or {}
    if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
        # A training (or other) config: its other sections are carried, not checked here.
        others = [k for k in raw if k not in ("data", "model")]
        view_cls = dataclasses.make_dataclass(
            "ConfigFile", [("data", DataConfig), ("model", dict, dataclasses.field(default_factory=dict))]
            + [(k, Any, None) for k in others])
        view = load_config(view_cls, file, overrides)
        cfg, model = view.data, model or view.model.get("path")
    else:
        cfg = load_config(DataConfig, file, [o.removeprefix("data.") for o in overrides])
    if not model:
        raise ConfigError("no model to take the processor from: pass --model PATH (a checkpoint "
                          "folder), or use a training config with model.path")
    return cfg, str(model)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config YAML (its data: section) or a data section")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. data.max_seq_len=2048")
    parser.add_argument("--model", default=None,
                        help="checkpoint folder holding the processor (default: model.path)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write the synthetic corpus")
    synth.add_argument("--out", required=True)
    synth.add_argument("--train-per-task", type=int, default=1000)
    synth.add_argument("--eval-per-task", type=int, default=50)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--tasks", default="vqa,grounding,doc",
                       help="comma-separated kinds: vqa, grounding, doc (the demo's mix), "
                            "grounding_distractor (a second shape in the image; the RL demo's)")
    check = sub.add_parser("check", help="report every sample training would reject")
    check.add_argument("path", help="a data file (with --format), or a config YAML")
    check.add_argument("overrides", nargs="*", help="config mode: key=value overrides")
    _add_source_args(check)
    check.add_argument("--model", default=None,
                       help="config mode: checkpoint folder holding the processor (default: "
                            "model.path)")
    check.add_argument("--decode", action="store_true",
                       help="also decode every image and video fully (slower)")
    check.add_argument("--out", default=None, help="write OUT/bad_samples.jsonl")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    convert = sub.add_parser("convert", help="write a source as canonical messages JSONL")
    convert.add_argument("path")
    _add_source_args(convert)
    convert.add_argument("--out", required=True, help="the JSONL file to write")
    stats = sub.add_parser("stats", help="token counts, budget hits and bad samples of a config")
    _add_config_args(stats)
    stats.add_argument("--limit", type=int, default=None, help="at most N samples per source")
    show = sub.add_parser("show", help="render encoded samples to text and images")
    _add_config_args(show)
    show.add_argument("--n", type=int, default=5, help="how many samples (the first N)")
    show.add_argument("--ids", default=None, help="comma-separated sample ids to show instead")
    show.add_argument("--source", default=None, help="only samples of this source (its name)")
    show.add_argument("--print", action="store_true", dest="print_text",
                      help="also print each rendering (trained tokens coloured on a terminal)")
    prepare = sub.add_parser("prepare", help="pre-encode samples into a datasets Arrow dataset")
    _add_config_args(prepare)
    prepare.add_argument("--num-proc", type=int, default=1, help="encoding processes")
    # Overrides may come before or after options; argparse leaves the later ones over.
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command in ("synth", "convert") or any(e.startswith("-") or "=" not in e
                                                               for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra

    if args.command == "synth":
        from data.tools.synthetic import generate

        try:
            paths = generate(args.out, args.train_per_task, args.eval_per_task, args.seed,
                             [t.strip() for t in args.tasks.split(",") if t.strip()])
        except ValueError as e:
            parser.error(f"--tasks {args.tasks}: {e}")
        for split, path in paths.items():
            print(f"[data] {split}: {path}")
        return 0
    if args.command == "check":
        return _check(args)
    if args.command == "convert":
        return _convert(args)
    return _run_tool(args)


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="llava_json",
                        help="a source format of data.sources.FORMATS (llava_json, messages, ...)")
    parser.add_argument("--image-root", default=None,
                        help="folder relative image paths resolve against (default: the file's)")
    parser.add_argument("--video-root", default=None,
                        help="folder relative video paths resolve against (default: image root)")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="allow relative media paths that resolve outside their root")


def _source(args):
    """The SourceConfig a file-mode command reads (ValueError on bad settings)."""
    from data.config import SourceConfig

    return SourceConfig(path=args.path, format=args.format, image_root=args.image_root,
                        video_root=args.video_root, allow_outside_root=args.allow_outside_root)


def _check(args) -> int:
    from data.samples import BadSampleFile, DataError
    from data.tools import check

    is_config = Path(args.path).suffix in (".yaml", ".yml")
    if args.overrides and not is_config:
        print(f"config error: key=value overrides need a config YAML, not {args.path}",
              file=sys.stderr)
        return 2
    progress = not args.no_progress
    try:
        if is_config:
            from data.configio import ConfigError

            try:
                cfg, model = load_tool_config(args.path, args.overrides, args.model)
                processor = _load_processor(model)
            except (ConfigError, OSError, ValueError) as e:
                print(f"config error: {e}", file=sys.stderr)
                return 2
            results = check.check_config(cfg, processor, args.decode, progress)
        else:
            try:
                source = _source(args)
            except ValueError as e:
                print(f"config error: {e}", file=sys.stderr)
                return 2
            results = {source.name: check.check_file(source, args.decode, progress)}
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 3
    bad = [r for result in results.values() for r in result.bad]
    repaired = [r for result in results.values() for r in result.repaired]
    for name, result in results.items():
        print(f"[data] {name}: {len(result.good)} good samples, {len(result.bad)} bad, "
              f"{len(result.repaired)} used after a repair")
    for record in bad:
        print(f"  bad: {record}")
    for record in repaired:
        print(f"  repaired: {record}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        out = BadSampleFile(Path(args.out) / "bad_samples.jsonl", mode="w")
        out.write(bad, stage="read")
        out.write(repaired, stage="repaired")
        print(f"[data] wrote {out.path}")
    return 1 if bad else 0


def _convert(args) -> int:
    from data.samples import DataError
    from data.tools.convert import convert

    try:
        source = _source(args)
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        written, bad = convert(source, args.out)
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 3
    print(f"[data] wrote {written} samples to {args.out}; {len(bad.records)} could not be read")
    for record in bad.records:
        print(f"  bad: {record}")
    return 1 if bad.records else 0


def _load_processor(model: str):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load a processor from {model!r} ({e}); pass --model with a "
                         "checkpoint folder") from None


def _run_tool(args) -> int:
    """stats / show / prepare: load the config and processor, then run the tool."""
    from data.configio import ConfigError
    from data.samples import DataError

    try:
        cfg, model = load_tool_config(args.config, args.overrides, args.model)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        processor = _load_processor(model)
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    try:
        if args.command == "stats":
            return _stats(args, cfg, processor, model, progress)
        if args.command == "show":
            return _show(args, cfg, processor, progress)
        return _prepare(args, cfg, processor, model, progress)
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 3


def _stats(args, cfg, processor, model, progress) -> int:
    from data.tools import stats

    doc = stats.run(cfg, processor, model, args.out, args.limit, progress)
    print(stats.format_table(doc))
    print(f"\n[data] wrote {Path(args.out) / 'stats.json'} and {len(doc['plots'])} histograms")
    return 1 if doc["total"]["over_max_bad_fraction"] else 0


def _show(args, cfg, processor, progress) -> int:
    from data.tools import show

    names = [s.name for s in cfg.source_configs()]
    if args.source is not None and args.source not in names:
        print(f"config error: --source {args.source!r} is not a source of this config; sources: "
              f"{', '.join(names)}", file=sys.stderr)
        return 2
    ids = [i.strip() for i in args.ids.split(",") if i.strip()] if args.ids else None
    result = show.run(cfg, processor, args.out, n=args.n, ids=ids, source=args.source,
                      print_text=args.print_text)
    print(show.format_summary(result))
    return 1 if result["missing_ids"] or not result["shown"] else 0


def _prepare(args, cfg, processor, model, progress) -> int:
    from data.tools import prepare

    manifest = prepare.run(cfg, processor, model, args.out, num_proc=args.num_proc,
                           progress=progress)
    counts = manifest["counts"]
    print(f"[data] prepared {counts['samples']} samples into {Path(args.out) / 'dataset'}; "
          f"{counts['bad']} bad (see {Path(args.out) / 'bad_samples.jsonl'})")
    for name, c in counts["per_source"].items():
        print(f"  {name}: {c['encoded']} encoded ({c['shrunk']} shrunk to fit the budget), "
              f"{c['bad_records']} bad records, {c['failed_to_encode']} failed to encode")
    for kind in ("image", "video"):
        stored = counts[f"{kind}_samples_stored_as"]
        if stored["float32"]:  # exact but 4-8x the bytes: this processor's arithmetic is not ours
            print(f"  {stored['float32']} of {stored['float32'] + stored['uint8']} samples with "
                  f"{kind}s keep float32 pixel values (uint8 would not give back the same floats)")
    return 1 if counts["over_max_bad_fraction"] else 0


if __name__ == "__main__":
    sys.exit(main())
