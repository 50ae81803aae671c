"""What a study shows in the terminal: the arms' table (rich), the ranking and a verdict per arm;
report.html is report/pages/compare.py's page, written as every report is."""

from __future__ import annotations

from typing import Any

from peaufine.report.pages.compare import NA, ranking_text, table_rows


def terminal_table(data: dict[str, Any]) -> Any:
    """The study as a rich table, then the ranking (ties said) and one verdict per arm."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    header, rows = table_rows(data, transfer=False)
    grid = Table(
        title=f"compare {data['study']}: {data['stage']}, {data['metric']} on the {data['split']} split"
    )
    for column in header:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*row)
    lines = [Text(f"ranking: {ranking_text(data)}")]
    for name, arm in data["arms"].items():
        lines.append(Text(f"- {arm['verdict']}"))
        lines.append(Text(f"  transfer ({name}): {arm.get('transfer', {}).get('verdict', NA)}"))
    return Group(grid, *lines)
