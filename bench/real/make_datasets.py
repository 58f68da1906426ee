"""Export the real-world series of bench/real/ from statsmodels' bundled data sets.

Usage: python bench/real/make_datasets.py [--out DIR]

Each series is written as NAME.csv with a header `index,value` and one row an observation, in
time order. Only data sets that ship inside the statsmodels wheel are used (no download). Data
sets of the Turing Change Point Dataset are left out on purpose (nile is in both; fertility and
co2 are too close to TCPD's children_per_woman and global_co2), and so is US population.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence

import statsmodels.api as sm

HERE = os.path.dirname(os.path.abspath(__file__))


def growth(levels: Sequence[float]) -> list[float]:
    """Annualised quarter-on-quarter growth in percent: 400 ln(x_t / x_{t-1})."""
    return [400 * math.log(b / a) for a, b in zip(levels, levels[1:])]


def macro(column: str, transform: Callable[[Sequence[float]], list[float]] = list) -> list[float]:
    return transform(list(sm.datasets.macrodata.load_pandas().data[column]))


def elnino() -> list[float]:
    """Monthly sea surface temperature, 1950-2010, the year rows laid end to end."""
    data = sm.datasets.elnino.load_pandas().data
    months = [c for c in data.columns if c != "YEAR"]
    return [float(row[m]) for _, row in data.iterrows() for m in months]


SERIES: dict[str, Callable[[], list[float]]] = {
    # yearly sunspot activity, 1700-2008
    "sm_sunspots": lambda: list(sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"]),
    "sm_elnino": elnino,
    # US quarterly macro data 1959Q1-2009Q3 (macrodata)
    "sm_macro_infl": lambda: macro("infl"),  # inflation rate, % a year
    "sm_macro_tbilrate": lambda: macro("tbilrate"),  # 3-month T-bill rate, %
    "sm_macro_unemp": lambda: macro("unemp"),  # unemployment rate, %
    "sm_macro_realint": lambda: macro("realint"),  # real interest rate, %
    "sm_macro_gdp_growth": lambda: macro("realgdp", growth),  # real GDP growth, % a year
    "sm_macro_m1_growth": lambda: macro("m1", growth),  # M1 money stock growth, % a year
    "sm_macro_cons_growth": lambda: macro("realcons", growth),  # real consumption growth
    # Danish quarterly data 1972Q2-1998Q4 (interest_inflation): long-term bond rate, and the
    # quarterly change in the log GDP deflator (inflation)
    "sm_dk_bond_rate": lambda: list(sm.datasets.interest_inflation.load_pandas().data["R"]),
    "sm_dk_inflation": lambda: list(sm.datasets.interest_inflation.load_pandas().data["Dp"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args()
    for name, make in SERIES.items():
        values = make()
        with open(os.path.join(args.out, name + ".csv"), "w") as f:
            f.write("index,value\n")
            f.writelines(f"{i},{v:.10g}\n" for i, v in enumerate(values))
        print(f"{name}: {len(values)} points")


if __name__ == "__main__":
    main()
