"""`python -m acestep.lora inspect|bake|convert|resize|merge`: thin argparse layer over the LoRA file tools."""

from __future__ import annotations

import argparse

from acestep.core.cli_help import add_command, make_parser
from acestep.core.errors import one_line_errors

from .bake import bake_file
from .convert import convert_file
from .inspect import format_report, inspect_lora
from .io import read_lora
from .merge import DTYPES, merge_file, packed_layout_of
from .models import registered
from .naming import key_style_help, key_styles
from .resize import METHODS, format_resize_table, rank_advice, resize_file
from .settings import LoraSettings

LORA_CONFIG_HELP = "the LoRA config it was trained with, for files that do not say (default: the file's header)"


def merge_input_help() -> str:
    """`merge`'s input, in the loaded families' own folder names."""
    families = []
    for kind in registered():
        layouts = [f"{folder}/" for folder in kind.folders]
        if kind.packed is not None:
            layouts.append(f"a {kind.packed.folder} ({', '.join(kind.packed.marks)}) or the root holding one")
        if layouts:
            families.append(f"; {kind.family}: {' or '.join(layouts)}")
    return "checkpoint root, its transformer folder or a .safetensors file" + "".join(families)


def merge_output_help() -> str:
    packed = [kind.packed.folder for kind in registered() if kind.packed is not None]
    return "the transformer folder to write (config.json + safetensors" + "".join(
        f"; for a {folder} input, a new {folder}" for folder in packed) + ")"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, "python -m acestep.lora")
    commands = parser.add_subparsers(dest="command", required=True)

    def lora_command(name: str, help_text: str, output: bool = True) -> argparse.ArgumentParser:
        sub = add_command(commands, name, help_text)
        sub.add_argument("input", help="LoRA .safetensors file, or a folder holding pytorch_lora_weights.safetensors")
        if output:
            sub.add_argument("output", help="the .safetensors file to write")
            sub.add_argument("--key_style", choices=key_styles(), default=None, help=key_style_help())
            sub.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        sub.add_argument("--lora_config_path", help=LORA_CONFIG_HELP)
        return sub

    lora_command("inspect", "list modules, ranks, alpha, scale and |delta W| per module", output=False)
    lora_command("bake", "bake the trained scale into the weights (then load at strength 1.0)")
    convert = lora_command("convert", "rewrite in another key style, scale baked in")
    convert.add_argument("--already_baked", action="store_true",
                         help="the file holds its scale already (baked by another tool) though it does not say so")
    resize = lora_command("resize", "reduce the rank by SVD (fixed or dynamic), baked")
    resize.add_argument("--method", choices=METHODS, default="rank",
                        help="rank: fixed --rank; sv_ratio / sv_fro / sv_cumulative: smallest rank reaching --target")
    resize.add_argument("--rank", type=int, help="the new rank (method rank) or the largest allowed (dynamic; default: the file's rank)")
    resize.add_argument("--target", type=float,
                        help="sv_ratio: keep s >= s_max/target (e.g. 4); sv_fro / sv_cumulative: fraction (e.g. 0.9); "
                             "no default: dynamic methods need it")
    resize.add_argument("--table", action="store_true", help="print the per-module table")

    merge = add_command(commands, "merge", "add a LoRA into the transformer weights, save a checkpoint folder")
    merge.add_argument("transformer", help=merge_input_help())
    merge.add_argument("lora", help="LoRA .safetensors file or folder")
    merge.add_argument("output", help=merge_output_help())
    merge.add_argument("--strength", type=float, default=1.0, help="as the strength slider in ComfyUI")
    merge.add_argument("--lora_config_path", help=LORA_CONFIG_HELP)
    merge.add_argument("--config", help="transformer config.json, when the weights are a single file (default: beside the weights)")
    merge.add_argument("--dtype", choices=DTYPES, help="store the merged weights in this dtype (default: as read)")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def run(args: argparse.Namespace) -> str:
    settings = LoraSettings.from_json(args.lora_config_path) if args.lora_config_path else None
    if args.command == "inspect":
        return format_report(inspect_lora(args.input, settings))
    if args.command == "bake":
        return f"baked LoRA written to {bake_file(args.input, args.output, settings, args.key_style, args.overwrite)}" \
               " (load it at strength 1.0)"
    if args.command == "convert":
        out = convert_file(args.input, args.output, args.key_style, settings, args.already_baked,
                           args.overwrite)
        style = read_lora(out).style
        return f"{style}-style LoRA written to {out} (scale baked in: load it at strength 1.0)"
    if args.command == "resize":
        out, reports = resize_file(args.input, args.output, args.method, args.rank, args.target, settings,
                                   args.key_style, args.overwrite)
        table = format_resize_table(reports) + "\n" if args.table else ""
        return f"{table}{rank_advice(reports)}\nresized LoRA written to {out} (load it at strength 1.0)"
    out = merge_file(args.transformer, args.lora, args.output, args.strength, settings, args.config, args.dtype,
                     args.overwrite)
    if packed := packed_layout_of(out):  # a folder of a family's packed layout: its family says how to use it
        _, layout = packed
        return f"merged {layout.folder} written to {out}" + (f"; {layout.use.format(name=out.name)}" if layout.use else "")
    return f"merged transformer written to {out}"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with one_line_errors():
        print(run(args))
