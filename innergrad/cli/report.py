"""`innergrad report`: (re)draw a run's report, or compare finished runs."""

from __future__ import annotations

from ..core.errors import InnergradError
from . import Formatter, allow_changed_data_option, warn


def add_parser(sub) -> None:
    p = sub.add_parser("report", formatter_class=Formatter, help="(re)draw a run's report, or compare runs",
                       description="Write report.md, loss.png, predictions.png and hidden.png for a run folder; "
                                   "with --compare, print a Markdown table of several finished runs instead.",
                       epilog="example:\n  innergrad report --run runs/exact --compare runs/detached "
                              "--plot compare.png")
    p.add_argument("--run", required=True, metavar="DIR", help="a run folder made by 'innergrad train'")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="other finished runs to put side by side")
    p.add_argument("--plot", metavar="PNG", help="with --compare: also draw their validation curves here "
                                                 "(.png, .pdf or .svg)")
    p.add_argument("--overwrite", action="store_true", help="replace the --plot file if it exists")
    allow_changed_data_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train._report import compare_runs, write_report

    if args.compare:
        print(compare_runs([args.run, *args.compare], plot=args.plot, overwrite=args.overwrite))
        if args.plot:
            print(f"\nwrote {args.plot}")
        return 0
    for flag, given in (("--plot", args.plot), ("--overwrite", args.overwrite)):
        if given:
            raise InnergradError(f"{flag} applies only with --compare (the report of one run goes into its own "
                                 f"folder); add --compare DIR or drop {flag}")
    print(f"wrote {write_report(args.run, allow_changed_data=args.allow_changed_data, say=warn)}")
    return 0
