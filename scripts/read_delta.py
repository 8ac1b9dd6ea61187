"""Count the rows of a bronze Delta table with the deltalake and pyarrow
packages, a reader independent of Infoctor's own, and print them as JSON.

Usage: python3 scripts/read_delta.py TABLE_FOLDER

Output: {"version": N, "rows": N, "distinct_versions": N,
         "current": {"Patient": N, ...}} where "current" counts, per
resource type, the resources whose latest version is not a delete.
"""

import json
import sys

import pyarrow.compute as pc
from deltalake import DeltaTable


def main(path: str) -> None:
    table_log = DeltaTable(path)
    rows = table_log.to_pyarrow_dataset().to_table(
        columns=["resource_type", "id", "version_id", "operation"]
    )
    distinct = rows.group_by(["resource_type", "id", "version_id"]).aggregate([])
    latest = rows.group_by(["resource_type", "id"]).aggregate([("version_id", "max")])
    latest_rows = latest.join(
        rows,
        keys=["resource_type", "id", "version_id_max"],
        right_keys=["resource_type", "id", "version_id"],
    )
    live = latest_rows.filter(pc.not_equal(latest_rows["operation"], "delete"))
    per_type = live.group_by("resource_type").aggregate([("id", "count")])
    current = {
        name: count
        for name, count in zip(
            per_type["resource_type"].to_pylist(), per_type["id_count"].to_pylist()
        )
    }
    print(
        json.dumps(
            {
                "version": table_log.version(),
                "rows": rows.num_rows,
                "distinct_versions": distinct.num_rows,
                "current": dict(sorted(current.items())),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: read_delta.py TABLE_FOLDER")
    main(sys.argv[1])
