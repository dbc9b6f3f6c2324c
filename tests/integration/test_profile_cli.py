"""`modeltap profile DATA -o reference.json` end to end, and reading CSV (and Parquet) tables."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from modeltap.cli import main
from modeltap.reference.builder import build_profile
from modeltap.reference.document import load_reference
from modeltap.reference.tables import read_table


def _training_csv(path: Path, rows: int = 300) -> Path:
    rng = np.random.default_rng(21)
    lines = ["customer_id,age,plan,monthly_charges,support_calls,notes,churn,score"]
    for i in range(rows):
        age = "" if i % 25 == 0 else f"{rng.normal(45, 12):.1f}"
        plan = ["pro", "basic", "free"][int(rng.integers(0, 3))]
        lines.append(
            f"c{i:05d},{age},{plan},{rng.normal(70, 20):.2f},{rng.poisson(1.5)},"
            f'"free text, quoted",{int(rng.integers(0, 2))},{rng.random():.4f}'
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_profile_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _training_csv(tmp_path / "train.csv")
    output = tmp_path / "reference.json"
    code = main(
        [
            "profile",
            str(data),
            "-o",
            str(output),
            "--target",
            "churn",
            "--prediction",
            "score",
            "--exclude",
            "notes",
            "--numeric",
            "support_calls",
            "--model-name",
            "churn",
            "--top-k",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    profile = load_reference(output)
    assert profile.model_name == "churn"
    assert profile.source_name == "train.csv"
    assert profile.source_rows == 300
    got = {(f.name, f.role, f.kind) for f in profile.features}
    assert got == {
        ("age", "input", "numeric"),
        ("plan", "input", "categorical"),
        ("monthly_charges", "input", "numeric"),
        ("support_calls", "input", "numeric"),
        ("churn", "label", "categorical"),
        ("score", "output", "numeric"),
    }
    assert profile.input_names == ("age", "plan", "monthly_charges", "support_calls")
    assert profile.ignored == ("customer_id", "notes")
    age = profile.feature("input", "age")
    assert age is not None
    assert age.missing == 12
    assert age.n == 288
    assert sum(age.counts) == 288
    plan = profile.feature("input", "plan")
    assert plan is not None
    assert len(plan.vocabulary) == 2
    assert sum(plan.counts) == 300
    lines = captured.out.splitlines()
    assert re.search(r"^age\s+input\s+numeric\s+n=288\s+missing=4\.00%$", lines[0])
    assert any(re.search(r"^churn\s+label\s+categorical\s+n=300\s+missing=0\.00%$", line) for line in lines)
    assert any(re.search(r"^customer_id\s+ignored \(id-like", line) for line in lines)
    assert any(re.search(r"^notes\s+ignored \(excluded\)", line) for line in lines)
    assert profile.id in lines[-1]
    assert "300 rows" in lines[-1]
    # The same data gives the same id.
    assert main(["profile", str(data), "-o", str(tmp_path / "again.json"), "--target", "churn",
                 "--prediction", "score", "--exclude", "notes", "--numeric", "support_calls",
                 "--top-k", "2"]) == 0  # fmt: skip
    assert load_reference(tmp_path / "again.json").id == profile.id


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("", [], "empty file: a header row of column names is needed"),
        ("a,b\n", [], "no data rows after the header"),
        ("a,b\n\n\n", [], "no data rows after the header"),
        ("a,b\n1,\n2,\n", ["--target", "b"], "column 'b' is all missing"),
        (
            "a\n" + "1\n" * 19 + "x\n",
            [],
            "column 'a' is numeric (19 of its 20 non-missing values are numbers)",
        ),
        ("a\n" + "1\n" * 19 + "x\n", [], "but data row 20 holds 'x', which is not a number"),
        ("a,a\n1,2\n", [], "duplicate column name 'a' (columns 1 and 2)"),
        ("a,\n1,2\n", [], "column 2 of the header has an empty name"),
        ("a,b\n1,2\n\n3\n", [], "data row 2 (line 4) has 1 fields, the header has 2"),
        ("a,b\n1,2\n3,4,5\n", [], "data row 2 (line 3) has 3 fields, the header has 2"),
        ("a,b\n1,2\n", ["--target", "c"], "target column 'c' is not in the data (columns: a, b)"),
        ("a,b\n1,2\n", ["--exclude", "a", "c"], "exclude column 'c' is not in the data"),
        ("a,b\n1,2\n", ["--prediction", "z"], "prediction column 'z' is not in the data"),
        ("a,b\n1,2\n", ["--categorical", "z"], "categorical column 'z' is not in the data"),
        ("a,b\n1,2\n", ["--exclude", "a", "b"], "no column left to profile"),
        ("a,b\n1,2\n", ["--target", "a", "--exclude", "a"], "column 'a' is given as both exclude and target"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, extra: list[str], message: str
) -> None:
    data = tmp_path / "data.csv"
    data.write_text(content, encoding="utf-8")
    output = tmp_path / "reference.json"
    assert main(["profile", str(data), "-o", str(output), *extra]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("modeltap: ")
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    assert message in captured.err
    assert not output.exists()


def _integers_with_a_word(path: Path, word: str = "oops", row: int = 123, rows: int = 500) -> Path:
    rng = np.random.default_rng(22)
    lines = ["age,calls"]
    for i in range(1, rows + 1):
        lines.append(f"{rng.normal(45, 12):.1f},{word if i == row else int(rng.integers(0, 1000))}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _profile(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["profile", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_one_word_among_500_integers_is_an_error_naming_the_column_and_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _integers_with_a_word(tmp_path / "train.csv")
    output = tmp_path / "reference.json"
    code, out, err = _profile([str(data), "-o", str(output)], capsys)
    assert code == 1
    assert out == ""
    assert err.startswith("modeltap: train.csv: column 'calls' is numeric (499 of its 500 non-missing values")
    assert "data row 123 holds 'oops', which is not a number" in err
    assert "--categorical calls" in err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert not output.exists()


def test_one_word_among_500_integers_with_categorical_is_categorical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _integers_with_a_word(tmp_path / "train.csv")
    output = tmp_path / "reference.json"
    code, out, err = _profile([str(data), "-o", str(output), "--categorical", "calls"], capsys)
    assert (code, err) == (0, "")
    calls = load_reference(output).feature("input", "calls")
    assert calls is not None
    assert calls.kind == "categorical"
    assert calls.n == 500
    assert re.search(r"^calls\s+input\s+categorical\s+n=500\s", out, re.MULTILINE)


def test_one_word_among_500_integers_with_numeric_is_missing_and_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _integers_with_a_word(tmp_path / "train.csv", word="n.a.")
    output = tmp_path / "reference.json"
    code, out, err = _profile([str(data), "-o", str(output), "--numeric", "calls"], capsys)
    assert code == 0
    assert err == (
        "modeltap: warning: train.csv: column 'calls' is profiled as numeric: 1 value that is not a "
        "number counted as missing (the first: data row 123, 'n.a.')\n"
    )
    calls = load_reference(output).feature("input", "calls")
    assert calls is not None
    assert (calls.kind, calls.n, calls.missing) == ("numeric", 499, 1)
    assert re.search(r"^calls\s+input\s+numeric\s+n=499\s+missing=0\.20%$", out, re.MULTILINE)


def test_a_column_list_before_the_data_leaves_the_data_to_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--numeric calls train.csv`: the list takes every value up to the next option, the file
    too; it is the data all the same, as with the file first. Without a file, DATA is missing."""
    data = _integers_with_a_word(tmp_path / "train.csv", word="NA")
    first, after = tmp_path / "first.json", tmp_path / "after.json"

    assert _profile([str(data), "--numeric", "calls", "-o", str(first)], capsys)[0] == 0
    assert _profile(["--numeric", "calls", str(data), "-o", str(after)], capsys)[0] == 0
    code, _, err = _profile(["--numeric", "calls", "-o", str(tmp_path / "none.json")], capsys)

    assert after.read_bytes() == first.read_bytes()
    assert code == 2
    assert "the following arguments are required: DATA" in err


def test_pandas_and_r_spellings_of_missing_among_numbers_are_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """R's `write.csv` writes NA, pandas reads NA, N/A, NULL... as missing: a column of numbers
    with a tenth of them is numeric with that missing rate (it was categorical, silently), while
    `NA` in a column of text stays a category (Namibia)."""
    rows = ["income,country"]
    for i in range(1, 501):
        cell = ("NA", "N/A", "NULL", "null")[i % 4] if i % 10 == 0 else str(30_000 + 37 * i)
        rows.append(f"{cell},{('NA', 'DE', 'FR')[i % 3]}")
    data = tmp_path / "train.csv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    output = tmp_path / "reference.json"

    code, _, err = _profile([str(data), "-o", str(output)], capsys)

    assert (code, err) == (0, "")
    income = load_reference(output).feature("input", "income")
    country = load_reference(output).feature("input", "country")
    assert income is not None
    assert (income.kind, income.n, income.missing) == ("numeric", 450, 50)
    assert country is not None
    assert (country.kind, sorted(country.vocabulary)) == ("categorical", ["DE", "FR", "NA"])


def test_94_percent_numbers_is_categorical_without_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.csv"
    cells = [str(i % 10) for i in range(470)] + ["unknown"] * 30  # 94 % numbers
    data.write_text("x,code\n" + "".join(f"{i}.5,{c}\n" for i, c in enumerate(cells)), encoding="utf-8")
    output = tmp_path / "reference.json"
    code, _, err = _profile([str(data), "-o", str(output)], capsys)
    assert (code, err) == (0, "")
    code_feature = load_reference(output).feature("input", "code")
    assert code_feature is not None
    assert code_feature.kind == "categorical"
    assert "unknown" in code_feature.vocabulary


def test_fewer_than_100_rows_is_a_warning_on_stderr_and_a_valid_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _training_csv(tmp_path / "small.csv", rows=40)
    output = tmp_path / "reference.json"
    code, out, err = _profile([str(data), "-o", str(output), "--target", "churn"], capsys)
    assert code == 0
    assert err.count("\n") == 1
    assert err.startswith("modeltap: warning: small.csv: the profile has only 40 rows: drift scores")
    assert "noisy" in err
    assert load_reference(output).source_rows == 40
    assert out.splitlines()[-1].startswith("40 rows; id sha256:")
    code, _, err = _profile([str(_training_csv(tmp_path / "big.csv", rows=100)), "-o", str(output)], capsys)
    assert (code, err) == (0, "")


def test_unreadable_inputs_and_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "r.json")]) == 1
    assert "missing.csv: cannot read the data" in capsys.readouterr().err
    binary = tmp_path / "latin1.csv"
    binary.write_bytes(b"name\n\xe9t\xe9\n")
    assert main(["profile", str(binary), "-o", str(tmp_path / "r.json")]) == 1
    assert "not UTF-8 text" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    good.write_text("a\n1\n2\n", encoding="utf-8")
    assert main(["profile", str(good), "-o", str(tmp_path / "nowhere" / "r.json")]) == 1
    assert "cannot write the reference profile" in capsys.readouterr().err


def test_argument_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["profile", "x.csv"], ["profile", "x.csv", "-o", "r.json", "--top-k", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "must be within 1..50" in capsys.readouterr().err


def test_read_csv_types_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(
        b"\xef\xbb\xbf num , text,mixed,empty,flags\r\n"
        b'1.5,"a, b",1,,true\r\n'
        b"\r\n"
        b"nan, c,x,,false\r\n"
        b" ,,2, ,\r\n"
    )
    names, columns = read_table(path)
    assert names == ["num", "text", "mixed", "empty", "flags"]
    assert columns[0].dtype == np.float64
    assert columns[0][0] == 1.5
    assert np.isnan(columns[0][1])
    assert np.isnan(columns[0][2])
    assert columns[1].tolist() == ["a, b", " c", None]  # strings as-is, blank cells missing
    assert columns[2].tolist() == ["1", "x", "2"]
    assert columns[3].tolist() == [None, None, None]
    assert columns[4].tolist() == [True, False, None]  # booleans: the categories true/false
    tsv = tmp_path / "t.tsv"
    tsv.write_text("a\tb\n1\tx\n", encoding="utf-8")
    assert read_table(tsv)[0] == ["a", "b"]


def test_csv_profile_equals_the_array_profile(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    values = np.round(rng.normal(size=500), 6)
    path = tmp_path / "x.csv"
    path.write_text("x\n" + "\n".join(repr(float(v)) for v in values) + "\n", encoding="utf-8")
    assert main(["profile", str(path), "-o", str(tmp_path / "r.json")]) == 0
    from_file = load_reference(tmp_path / "r.json")
    from_array = build_profile({"x": values})
    assert from_file.id == from_array["id"]


def test_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(7)
    table = pa.table(
        {
            "age": pa.array([None, *rng.normal(40, 10, 199).tolist()], type=pa.float64()),
            "calls": pa.array(rng.integers(0, 100, 200), type=pa.int64()),
            "plan": pa.array([None, *rng.choice(["pro", "basic"], 199).tolist()], type=pa.string()),
            "flag": pa.array([True, False, None, True] * 50, type=pa.bool_()),
            "label": pa.array([1, None, 0, 1] * 50, type=pa.int32()),
        }
    )
    path = tmp_path / "train.parquet"
    pq.write_table(table, path)
    names, columns = read_table(path)
    assert names == ["age", "calls", "plan", "flag", "label"]
    assert np.isnan(columns[0][0])
    assert columns[1].dtype.kind == "i"
    assert columns[2][0] is None
    output = tmp_path / "reference.json"
    assert main(["profile", str(path), "-o", str(output), "--target", "label"]) == 0, capsys.readouterr().err
    profile = load_reference(output)
    got = {(f.name, f.role, f.kind, f.missing) for f in profile.features}
    assert got == {
        ("age", "input", "numeric", 1),
        ("calls", "input", "numeric", 0),
        ("plan", "input", "categorical", 1),
        ("flag", "input", "categorical", 50),
        ("label", "label", "categorical", 50),
    }
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    assert main(["profile", str(broken), "-o", str(output)]) == 1
    assert "cannot read the Parquet file" in capsys.readouterr().err


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("pyarrow") is not None:
        pytest.skip("pyarrow is installed")
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1")
    assert main(["profile", str(path), "-o", str(tmp_path / "r.json")]) == 1
    assert "reading Parquet needs pyarrow" in capsys.readouterr().err
