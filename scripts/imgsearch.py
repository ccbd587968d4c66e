"""`imgsearch`: one command for the service, the CLI, the evaluation tools and the benchmarks.

Each subcommand runs an existing module exactly as `python -m <module>` does (same flags, same
exit status), so both spellings keep working:

    imgsearch serve [--host H --port P]     python -m app.main
    imgsearch load|list|count|drop|repair|upgrade-ids|search|calibrate|add-folder|ocr|phash|duplicates|
              retention|rebuild|switch ...
                                            python -m scripts.cli ...
    imgsearch eval build-lmdb|extract|predict|evaluate|crosscheck ...
                                            python -m operations.evaluation.cli ...
    imgsearch bench load|search|add|filter|extract|knn|ocr|duplicates|gen-split ...
                                            python -m bench.bench_load ... (bench.gen_split)
    imgsearch demo-data ...                 python -m datasets.demo_generator ...
    imgsearch train-demo | check-demo ...   python -m scripts.train_demo_model / check_demo_model

`imgsearch <command> --help` shows that command's own flags.
"""

from __future__ import annotations

import runpy
import sys

# command -> module run as __main__; CLI_COMMANDS go to scripts.cli with the command kept.
COMMANDS = {
    "serve": "app.main",
    "eval": "operations.evaluation.cli",
    "demo-data": "datasets.demo_generator",
    "train-demo": "scripts.train_demo_model",
    "check-demo": "scripts.check_demo_model",
}
CLI_COMMANDS = (
    "load",
    "list",
    "count",
    "drop",
    "repair",
    "upgrade-ids",
    "search",
    "calibrate",
    "add-folder",
    "ocr",
    "phash",
    "duplicates",
    "rebuild",
    "switch",
    "retention",
)
BENCHES = {
    "load": "bench.bench_load",
    "search": "bench.bench_search",
    "add": "bench.bench_add",
    "filter": "bench.bench_filter",
    "extract": "bench.bench_extract",
    "knn": "bench.bench_knn",
    "ocr": "bench.bench_ocr",
    "duplicates": "bench.bench_duplicates",
    "gen-split": "bench.gen_split",
}


def _usage() -> str:
    return __doc__ or ""


def _run_module(module: str, prog: str, args: list[str]) -> int:
    """Run `module` as `python -m module args` would; its SystemExit code is the result."""
    sys.argv = [prog, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `imgsearch` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in CLI_COMMANDS:
        return _run_module("scripts.cli", "imgsearch", args)
    if command in COMMANDS:
        return _run_module(COMMANDS[command], f"imgsearch {command}", rest)
    if command == "bench":
        if not rest or rest[0] not in BENCHES:
            print(f"usage: imgsearch bench {{{','.join(BENCHES)}}} [flags]", file=sys.stderr)
            return 0 if rest and rest[0] in ("-h", "--help") else 2
        return _run_module(BENCHES[rest[0]], f"imgsearch bench {rest[0]}", rest[1:])
    print(f"imgsearch: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
