"""Per-modality tables (CSV or Parquet) joined on an id column into :class:`MultiViewData`.

Each file holds one row per instance: an id column, optionally a label column, and numeric
feature columns (every other column). Rows of different files are joined on the id as
:meth:`MultiViewData.from_tables` does: the union of ids is kept and an id absent from a
modality's file makes that modality missing for the instance. Empty CSV cells and Parquet
nulls are read as NaN (partial views; see ``data.partial_views``).

CSV is read with the standard library; Parquet with ``pyarrow`` (``pip install
"calmrl[tables]"``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping

import numpy as np

from .dataset import MultiViewData, first_repeat

__all__ = ["read_table", "load_tables", "view_columns", "check_columns"]


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows, UTF-8 (a byte-order mark is dropped). A row whose field count is not the
    header's is refused with its line number (an unquoted ``1,234.5`` would shift every later
    column of the row); blank lines are skipped."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not UTF-8 (byte {raw[e.start]:#04x}); save the table as UTF-8") from None
    reader = csv.reader(text.splitlines(keepends=True), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    rows = []
    for r in reader:
        if not r:
            continue
        if rows and len(r) != len(rows[0]):
            raise ValueError(f"{path}: line {reader.line_num} has {len(r)} fields, the header {len(rows[0])}; a "
                             "number written with a thousands separator (1,234.5) must be quoted or written 1234.5")
        rows.append(r)
    if not rows:
        raise ValueError(f"{path} is empty")
    return rows[0], rows[1:]


def _read_parquet(path: Path) -> tuple[list[str], dict]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise ValueError(f"reading {path} needs pyarrow: pip install 'calmrl[tables]'") from None
    try:
        _refuse_duplicates(path, pq.read_schema(path).names)    # (read_table fails on them, cryptically)
        t = pq.read_table(path)
    except ValueError as e:
        if "duplicate column" in str(e):
            raise
        raise ValueError(f"{path} is not a readable Parquet file: {str(e).splitlines()[0]}") from None
    except Exception as e:  # ArrowInvalid etc.
        raise ValueError(f"{path} is not a readable Parquet file: {e}") from None
    return t.column_names, {c: t.column(c).to_pylist() for c in t.column_names}


def _refuse_duplicates(path: Path, header: list[str]) -> None:
    """A column name given twice: a dict of columns would keep one of them silently."""
    seen, dup = set(), []
    for c in header:
        if c in seen and c not in dup:
            dup.append(c)
        seen.add(c)
    if dup:
        raise ValueError(f"{path} has duplicate column name(s) {dup}: each column must be named once (which one "
                         "is meant cannot be told)")


LABEL_LIKE = ("label", "labels", "class", "classes", "target", "y", "category")
INDEX_LIKE = ("", "unnamed: 0", "index", "__index_level_0__")


def read_table(path: str | Path, id_column: str = "id", label_column: str = "",
               notes: list | None = None, columns: list | None = None) -> tuple[list, np.ndarray, dict]:
    """``(ids, features (n, d) float32, labels)`` of one CSV/Parquet file; ``labels`` is
    ``{id: label}``, or ``None`` when the table has no label column.

    Ids are strings exactly as written (``'007'`` and ``'7'`` are two instances). The label
    column is never a feature; a column *named* like a label (``label``, ``class``, ``target``,
    ...) while ``label_column`` is unset is refused rather than trained on as a feature. A
    pandas index written by ``to_csv`` without ``index=False`` (an unnamed first column, or
    ``Unnamed: 0``) is dropped, with a line in ``notes``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        header, cols = _read_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        header, rows = _read_csv(path)
        cols = {c: [r[j] for r in rows] for j, c in enumerate(header)}
    else:
        raise ValueError(f"{path}: unknown table format '{suffix}' (use .csv or .parquet)")
    _refuse_duplicates(path, header)
    if id_column not in header:
        raise ValueError(f"{path} has no id column '{id_column}' (columns: {header[:8]}...); name the id column (--id-column, or data.id_column in a config)")
    dropped = [c for c in header if c.strip().lower() in INDEX_LIKE and c not in (id_column, label_column)]
    if dropped:
        if notes is not None:
            notes.append(f"{path.name}: column(s) {dropped} look like a saved pandas index (to_csv without "
                         "index=False) and were dropped, not used as features")
    if not label_column:
        like = [c for c in header if c.strip().lower() in LABEL_LIKE and c != id_column]
        if like:
            raise ValueError(f"{path} has a column '{like[0]}' named like class labels; name it as the label "
                             f"column (--label-column {like[0]}, or data.label_column={like[0]} in a config) to use it as labels (it is never a feature), or rename it if it really is "
                             "a feature")
    feats = [c for c in header if c not in (id_column, label_column) and c not in dropped]
    if columns is not None:          # the feature columns' names, for notes that name them
        columns[:] = feats
    if not feats:
        raise ValueError(f"{path} has no feature column besides '{id_column}'")
    n = len(cols[id_column])
    if n == 0:
        raise ValueError(f"{path} holds no row")
    X = np.empty((n, len(feats)), np.float32)
    for j, c in enumerate(feats):
        col = cols[c]
        try:
            X[:, j] = [np.nan if v is None or v == "" else float(v) for v in col]
        except (TypeError, ValueError):
            bad = next(v for v in col if not _is_number(v))
            raise ValueError(f"{path}: column '{c}' holds a non-numeric value {bad!r}; only the id and label "
                             "columns may be non-numeric") from None
    ids = [_id(v) for v in cols[id_column]]
    empty = next((k for k, v in enumerate(ids) if v.lower() in NULL_LIKE), None)
    if empty is not None:
        raise ValueError(f"{path}: data row {empty + 1} has an empty or null id ({cols[id_column][empty]!r}); every "
                         "row needs an id (rows of different tables are joined on it)")
    padded = sum(isinstance(v, str) and v != v.strip() for v in cols[id_column])
    if padded and notes is not None:
        notes.append(f"{path.name}: {padded} id(s) had spaces around them, stripped (' x ' and 'x' are one "
                     "instance)")
    rep = first_repeat(ids)
    if rep is not None:
        raise ValueError(f"{path} lists id {rep[0]} more than once (data rows {rep[1] + 1} and {rep[2] + 1}); ids "
                         "must be unique within a table")
    labels = None                       # no label column in this table
    if label_column and label_column in header:
        # an empty, NaN or null label: the instance is unlabelled (never a class of its own)
        labels = {i: _label(y) for i, y in zip(ids, cols[label_column]) if not _null(y)}
    return ids, X, labels


NULL_LIKE = ("", "none", "nan", "null", "na", "<na>", "n/a")


def _null(v) -> bool:
    """An empty, NaN or null cell as pandas and R write them."""
    if v is None:
        return True
    if isinstance(v, float):
        return v != v
    return isinstance(v, str) and v.strip().lower() in NULL_LIKE


def _is_number(v) -> bool:
    if v is None or v == "":
        return True
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _id(v) -> str:
    """Ids are strings as written: ``'007'`` stays ``'007'``; an integer id of a Parquet
    column is its decimal string (so ``7`` there joins ``'7'`` in a CSV)."""
    if isinstance(v, str):
        return v.strip()
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _label(v):
    """Labels compare as written: ``'3'`` in a CSV equals 3 in a Parquet integer column."""
    if isinstance(v, str):
        s = v.strip()
        return int(s) if s.lstrip("-").isdigit() else s
    return v.item() if hasattr(v, "item") else v


def load_tables(tables: Mapping[str, str | Path], id_column: str = "id", label_column: str = "") -> MultiViewData:
    """Join ``{modality: file}`` on ``id_column`` (union of ids; absent = missing). The label of
    an instance is taken from whichever table has it; tables that disagree are an error."""
    if not tables:
        raise ValueError("no table given")
    notes: list = []
    cols: dict = {name: [] for name in tables}
    read = {name: read_table(p, id_column, label_column, notes, cols[name]) for name, p in tables.items()}
    if label_column and all(lab is None for _, _, lab in read.values()):
        raise ValueError(f"data.label_column '{label_column}' is not a column of any table "
                         f"({', '.join(str(p) for p in tables.values())})")
    labels: dict = {}
    for name, (_, _, lab) in read.items():
        for i, y in (lab or {}).items():
            if labels.setdefault(i, y) != y:
                raise ValueError(f"id {i!r} has label {labels[i]!r} in one table and {y!r} in '{name}'")
    if label_column and not labels:
        raise ValueError(f"the label column '{label_column}' is empty in every table")
    data = MultiViewData.from_tables({name: (ids, X) for name, (ids, X, _) in read.items()},
                                     labels=labels or None, validate=False)
    data.meta.update({"source": "tables", "tables": {k: str(v) for k, v in tables.items()}, "columns": cols,
                      "notes": notes + data.meta.get("notes", [])})
    return data


def view_columns(data) -> dict | None:
    """``modality -> [feature column names]`` of the data's own tables (``meta["columns"]``),
    for the modalities the data has; ``None`` where its source named no columns."""
    cols = (data.meta or {}).get("columns")
    if not isinstance(cols, dict):
        return None
    out = {n: [str(c) for c in cols[n]] for n in data.names if isinstance(cols.get(n), list)}
    return out or None


def check_columns(trained: dict | None, data, what: str) -> None:
    """Refuse data whose feature columns are not those the model was trained on, in that order
    (a table with its columns in another order would be read with the wrong meaning)."""
    given = view_columns(data)
    if not trained or not given:
        return
    for name, cols in trained.items():
        if name not in given or given[name] == cols:
            continue
        new = given[name]
        if sorted(new) == sorted(cols):
            i = next(j for j, (a, b) in enumerate(zip(cols, new)) if a != b)
            raise ValueError(f"{what}: modality '{name}' has the training columns in another order (position {i}: "
                             f"'{new[i]}' where training had '{cols[i]}'); reorder the table's columns as in training")
        extra, lack = [c for c in new if c not in cols][:3], [c for c in cols if c not in new][:3]
        raise ValueError(f"{what}: modality '{name}' has other feature columns than training "
                         f"(not in training: {extra}; missing: {lack}); it cannot be read with the model's meaning")

