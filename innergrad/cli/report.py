"""`innergrad report`: (re)draw a run's report, or compare finished runs."""

from __future__ import annotations

from ..core.schema import Opt
from . import Formatter, allow_changed_data_option, options, overwrite_option, warn


def add_parser(sub) -> None:
    p = sub.add_parser("report", formatter_class=Formatter, help="(re)draw a run's report, or compare runs",
                       description="Write report.md, loss.png, predictions.png and hidden.png for a run folder; "
                                   "with --compare, print a Markdown table of several finished runs instead.",
                       epilog="example:\n  innergrad report --run runs/exact --compare runs/detached "
                              "--plot compare.png")
    # The report of one run goes into its own folder: --plot and --overwrite apply to --compare only.
    options(p, Opt("run", "path", None, "a run folder made by 'innergrad train'", metavar="DIR", required=True),
            Opt("compare", "path", None, "other finished runs to put side by side", metavar="DIR", nargs="+"),
            Opt("plot", "path", None, "also draw their validation curves here (.png, .pdf or .svg)", metavar="PNG",
                requires=("compare",)),
            overwrite_option("the --plot file", requires=("compare",)),
            allow_changed_data_option(excludes=("compare",)))
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train._report import compare_runs, write_report

    if args.compare:
        print(compare_runs([args.run, *args.compare], plot=args.plot, overwrite=args.overwrite))
        if args.plot:
            print(f"\nwrote {args.plot}")
        return 0
    print(f"wrote {write_report(args.run, allow_changed_data=args.allow_changed_data, say=warn)}")
    return 0
