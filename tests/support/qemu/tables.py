"""Reading kit's tabulate tables (kit doctor, kit list) back into cells, wrapped cells joined:
the qemu tests read what kit printed in the guest."""


def table_rows(stdout, new_row=lambda cells: bool(cells[0])):
    """The rows of a tabulate table whose cells may wrap (kit list, kit doctor): each cell's lines
    joined with a space. Columns as the dashes line draws them; new_row(cells) says where a row starts."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    starts, pos = [], 0
    for dashes in lines[1].split("  "):
        starts.append(pos)
        pos += len(dashes) + 2
    rows = []
    for line in lines[2:]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        if line.startswith("`"):  # kit list's closing hint
            break
        if rows and not new_row(cells):
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    return rows


def doctor_rows(stdout):
    """{check: (ok, detail)} from doctor's table; the unnamed row under lockdown is keyed ''."""
    rows = {}
    # doctor's unnamed row under lockdown has a status and no check
    for check, ok, detail in table_rows(stdout, new_row=lambda cells: bool(cells[0]) or cells[1] in ("ok", "NO")):
        assert ok in ("ok", "NO"), (check, ok, detail)
        rows[check] = (ok == "ok", detail)
    return rows
