import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deemd.metadata import (
    COLUMNS,
    build_sites_table,
    coerce_types,
    consistency_errors,
    dose_groups,
    infected_control_check,
    noninfected_control_check,
    map_columns,
    merge_close_doses,
    plate_digests,
    store_digests,
    plates_are_numbers,
    read_metadata_csv,
    strip_values,
    well_table,
    wrong_separator,
)
from deemd.validate import MetadataError, load_schema

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(REPO / "workflow" / "schemas" / "metadata.schema.yaml")


def raw_metadata(plates=(1, 2), wells=("A01", "B02"), experiment="HRCE-1"):
    rows = []
    for plate in plates:
        for i, well in enumerate(wells):
            treated = i % 2 == 1
            for site in range(1, 5):
                rows.append(
                    {
                        "site_id": f"{experiment}_{plate}_{well}_{site}",
                        "well_id": f"{experiment}_{plate}_{well}",
                        "cell_type": "HRCE",
                        "experiment": experiment,
                        "plate": str(plate),
                        "well": well,
                        "site": str(site),
                        "disease_condition": "Active SARS-CoV-2" if treated else "Mock",
                        "treatment": "Remdesivir" if treated else np.nan,
                        "treatment_conc": "0.3" if treated else np.nan,
                        "SMILES": "CCO" if treated else np.nan,
                    }
                )
    return pd.DataFrame(rows)


def test_build_sites_table_types_order_and_plate_id():
    sites = build_sites_table(raw_metadata(plates=(2, 1)), SCHEMA, "m.csv")
    assert list(sites.columns) == COLUMNS + ["plate_id"]
    assert sites["plate"].dtype == "Int64" and sites["treatment_conc"].dtype == float
    assert sites["plate_id"].tolist()[:4] == ["HRCE-1_1"] * 4
    assert sites["site"].tolist()[:4] == [1, 2, 3, 4]


def test_filters_cell_types_and_experiments():
    raw = pd.concat([raw_metadata(), raw_metadata(experiment="VERO-1").assign(cell_type="VERO")])
    sites = build_sites_table(raw, SCHEMA, "m.csv", cell_types=["HRCE"])
    assert set(sites["cell_type"]) == {"HRCE"}
    sites = build_sites_table(raw, SCHEMA, "m.csv", experiments=["VERO-1"])
    assert set(sites["experiment"]) == {"VERO-1"}
    with pytest.raises(MetadataError, match="no site left"):
        build_sites_table(raw, SCHEMA, "m.csv", cell_types=["Huh7"])


def test_non_numeric_value_names_line_and_column():
    raw = raw_metadata()
    raw.loc[5, "treatment_conc"] = "ten"
    with pytest.raises(MetadataError, match=r"m\.csv, line 7, column 'treatment_conc': value 'ten' is not a number"):
        build_sites_table(raw, SCHEMA, "m.csv")
    raw = raw_metadata()
    raw.loc[2, "site"] = "2.5"
    with pytest.raises(MetadataError, match=r"line 4, column 'site': value '2.5' is not an integer"):
        coerce_types(raw, "m.csv")


def test_consistency_rules():
    sites = coerce_types(raw_metadata(), "m.csv")
    assert consistency_errors(sites, "m.csv") == []
    broken = sites.copy()
    broken.loc[4, "treatment_conc"] = np.nan
    assert "treated site without treatment_conc" in consistency_errors(broken, "m.csv")[0]
    broken = sites.copy()
    broken.loc[1, "site_id"] = broken.loc[0, "site_id"]
    assert any("site_id appears more than once" in m for m in consistency_errors(broken, "m.csv"))
    broken = sites.copy()
    broken.loc[1, "disease_condition"] = "Active SARS-CoV-2"
    assert any("sites of one well disagree" in m for m in consistency_errors(broken, "m.csv"))


def test_facility_mapping_derives_ids_and_translates_values():
    raw = pd.DataFrame(
        {
            "Barcode": ["7", "7"],
            "Pos": ["C03", "C03"],
            "Field": ["1", "2"],
            "Infection": ["virus", "virus"],
            "Drug": ["X", "X"],
            "Dose": ["1", "1"],
        }
    )
    table = map_columns(
        raw,
        columns={"plate": "Barcode", "well": "Pos", "site": "Field", "disease_condition": "Infection", "treatment": "Drug", "treatment_conc": "Dose"},
        values={"disease_condition": {"virus": "Active SARS-CoV-2"}},
        defaults={"experiment": "LAB-1", "cell_type": "HRCE"},
        source="f.csv",
    )
    assert table["well_id"].tolist() == ["LAB-1_7_C03"] * 2
    assert table["site_id"].tolist() == ["LAB-1_7_C03_1", "LAB-1_7_C03_2"]
    assert set(table["disease_condition"]) == {"Active SARS-CoV-2"}
    with pytest.raises(MetadataError, match=r"column\(s\) \['Nope'\]"):
        map_columns(raw, {"plate": "Nope"}, None, None, "f.csv")


def test_plate_digests_change_only_for_the_changed_plate():
    sites = build_sites_table(raw_metadata(plates=(1, 2)), SCHEMA, "m.csv")
    before = plate_digests(sites)
    changed = sites.copy()
    changed.loc[changed["plate_id"] == "HRCE-1_2", "treatment_conc"] = changed["treatment_conc"] * 2
    after = plate_digests(changed)
    assert before["HRCE-1_1"] == after["HRCE-1_1"]
    assert before["HRCE-1_2"] != after["HRCE-1_2"]
    more = build_sites_table(raw_metadata(plates=(1, 2, 3)), SCHEMA, "m.csv")
    assert {k: v for k, v in plate_digests(more).items() if k in before} == before


def test_store_digests_change_with_sites_and_untreated_wells_only():
    """Probe 4: a treated well's new concentration restitched its plate."""
    sites = build_sites_table(raw_metadata(plates=(1, 2)), SCHEMA, "m.csv")
    before = store_digests(sites)
    treated = sites["treatment"].notna() & (sites["plate_id"] == "HRCE-1_2")
    changed = sites.assign(treatment_conc=sites["treatment_conc"].where(~treated, 99.0),
                           treatment=sites["treatment"].where(~treated, "OTHER"))
    assert store_digests(changed) == before and plate_digests(changed)["HRCE-1_2"] != plate_digests(sites)["HRCE-1_2"]
    # A well that becomes untreated is a 16-bit plate's intensity reference: the store changes.
    untreated = sites.assign(treatment=sites["treatment"].where(~treated, None))
    assert store_digests(untreated)["HRCE-1_2"] != before["HRCE-1_2"] and store_digests(untreated)["HRCE-1_1"] == before["HRCE-1_1"]
    fewer = sites[~((sites["plate_id"] == "HRCE-1_1") & (sites["site"] == 4))]  # a site no longer listed
    assert store_digests(fewer)["HRCE-1_1"] != before["HRCE-1_1"]


def test_well_table_one_row_per_well():
    sites = build_sites_table(raw_metadata(), SCHEMA, "m.csv")
    wells = well_table(sites)
    assert len(wells) == 4 and (wells["n_sites"] == 4).all()
    assert wells["treatment"].notna().sum() == 2


def test_read_metadata_csv_keeps_strings(tmp_path):
    path = tmp_path / "m.csv"
    raw_metadata().to_csv(path, index=False)
    table = read_metadata_csv(str(path))
    assert table["plate"].map(type).eq(str).all()
    assert table["treatment"].isna().sum() == 8


def test_empty_and_header_only_csv_name_the_file(tmp_path):
    """issue 11: an empty CSV gave a bare EmptyDataError, a header-only one blamed the filter."""
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(MetadataError, match=r"empty\.csv: empty file"):
        read_metadata_csv(str(empty))
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(COLUMNS) + "\n")
    raw = read_metadata_csv(str(header_only))
    with pytest.raises(MetadataError, match=r"header\.csv: no rows, only the header"):
        build_sites_table(raw, SCHEMA, str(header_only))


def test_duplicate_column_names_are_an_error(tmp_path):
    """issue 11: with two columns of one name, the first was used silently."""
    path = tmp_path / "m.csv"
    raw_metadata().assign(extra="x").rename(columns={"extra": "plate"}).to_csv(path, index=False)
    with pytest.raises(MetadataError, match=r"m\.csv, line 1: column 'plate' appears 2 times \(columns \[5, 12\]\)"):
        read_metadata_csv(str(path))


def test_mapped_column_colliding_with_an_existing_one_is_an_error():
    """issue 11: mapping Barcode -> plate when the CSV also has 'plate' failed at the split step."""
    raw = raw_metadata().assign(Barcode="9")
    with pytest.raises(MetadataError, match=r"maps 'Barcode' to 'plate', but the CSV already has a column 'plate'"):
        build_sites_table(raw, SCHEMA, "m.csv", columns={"plate": "Barcode"})
    with pytest.raises(MetadataError, match=r"maps the CSV column 'Barcode' to 2 columns \['plate', 'experiment'\]"):
        map_columns(raw.drop(columns=["plate", "experiment"]), {"plate": "Barcode", "experiment": "Barcode"}, None, None, "m.csv")


@pytest.mark.parametrize("value", ["inf", "-inf", "1e999", "nan"])
def test_non_finite_concentration_names_line_and_column(value):
    """issue 11: treatment_conc: inf was accepted."""
    raw = raw_metadata()
    raw.loc[5, "treatment_conc"] = value
    with pytest.raises(MetadataError, match=rf"m\.csv, line 7, column 'treatment_conc': value '{value}' is not a finite number"):
        build_sites_table(raw, SCHEMA, "m.csv")


def test_negative_or_zero_concentration_names_line_and_column():
    raw = raw_metadata()
    raw.loc[5, "treatment_conc"] = "-0.3"
    with pytest.raises(MetadataError, match=r"m\.csv, line 7, column 'treatment_conc': value -0\.3: .*minimum of 0"):
        build_sites_table(raw, SCHEMA, "m.csv")


def test_well_id_disagreeing_with_plate_and_well_names_the_line():
    """issue 11: such a well_id failed only at the split step, with a pandas reindex error."""
    raw = raw_metadata()
    raw.loc[5, "well_id"] = "HRCE-1_1_Z99"  # line 7: plate 1, B02, site 2
    with pytest.raises(MetadataError, match=r"m\.csv, line 7, column 'well_id': value 'HRCE-1_1_Z99' disagrees with experiment/plate/well HRCE-1/1/B02: the other sites"):
        build_sites_table(raw, SCHEMA, "m.csv")
    raw = raw_metadata()
    raw["well_id"] = raw["experiment"] + "_" + raw["well"]  # plate left out: two plates share each well_id
    with pytest.raises(MetadataError, match=r"line 10, column 'well_id': value 'HRCE-1_A01' disagrees with experiment/plate/well HRCE-1/2/A01: well_id 'HRCE-1_A01' also names HRCE-1/1/A01"):
        build_sites_table(raw, SCHEMA, "m.csv")


def test_infected_control_check_pools_or_fails_per_experiment():
    """A plate without untreated infected wells is pooled with its experiment; an
    experiment without any is an error naming it and its plates."""
    raw = raw_metadata(plates=(1, 2, 3))
    controls = (raw["plate"] != "2") & raw["treatment"].isna()
    raw.loc[controls, "disease_condition"] = "Active SARS-CoV-2"
    sites = build_sites_table(raw, SCHEMA, "m.csv")
    assert infected_control_check(sites, "m.csv") == ([], ["HRCE-1_2"])
    errors, pooled = infected_control_check(build_sites_table(raw_metadata(), SCHEMA, "m.csv"), "m.csv")
    assert pooled == [] and len(errors) == 1
    assert "m.csv: experiment 'HRCE-1' (plate(s) ['HRCE-1_1', 'HRCE-1_2']) has no untreated 'Active SARS-CoV-2' well" in errors[0]


def test_noninfected_control_check_pools_or_fails_per_experiment():
    """Probe c7: an experiment without Mock or UV wells failed only at the efficacy step."""
    raw = raw_metadata(plates=(1, 2, 3))
    assert set(raw.loc[raw["treatment"].isna(), "disease_condition"]) <= {"Mock", "UV Inactivated SARS-CoV-2"}
    raw.loc[(raw["plate"] == "2") & raw["treatment"].isna(), "disease_condition"] = "Active SARS-CoV-2"
    assert noninfected_control_check(build_sites_table(raw, SCHEMA, "m.csv"), "m.csv") == ([], ["HRCE-1_2"])
    raw.loc[raw["treatment"].isna(), "disease_condition"] = "Active SARS-CoV-2"
    errors, pooled = noninfected_control_check(build_sites_table(raw, SCHEMA, "m.csv"), "m.csv")
    assert pooled == [] and len(errors) == 1
    assert "m.csv: experiment 'HRCE-1' (plate(s) ['HRCE-1_1', 'HRCE-1_2', 'HRCE-1_3']) has no untreated 'Mock' or" in errors[0]
    assert "0 % reference" in errors[0]


def test_barcode_plates_stay_text_and_numbers_become_integers():
    """issue 15: plate identifiers may be barcodes; all-number plates stay integers."""
    raw = raw_metadata(plates=("BC24A017", "BC24A018"))
    sites = build_sites_table(raw, SCHEMA, "m.csv")
    assert sites["plate"].map(type).eq(str).all()
    assert sorted(sites["plate_id"].unique()) == ["HRCE-1_BC24A017", "HRCE-1_BC24A018"]
    assert build_sites_table(raw_metadata(plates=(1, 2)), SCHEMA, "m.csv")["plate"].dtype == "Int64"
    raw.loc[3, "plate"] = "BC_24"  # an underscore would split plate_id wrongly
    with pytest.raises(MetadataError, match=r"m\.csv, line 5, column 'plate': value 'BC_24'"):
        build_sites_table(raw, SCHEMA, "m.csv")


def test_sites_must_be_in_the_site_layout():
    raw = raw_metadata()
    nine = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert len(build_sites_table(raw, SCHEMA, "m.csv", site_layout=nine)) == len(raw)
    with pytest.raises(MetadataError, match=r"m\.csv, line 5, column 'site': value 4 is not a site of dataset.site_layout \[\[1, 2\], \[3, 0\]\]"):
        build_sites_table(raw, SCHEMA, "m.csv", site_layout=[[1, 2], [3, 0]])


def test_surrounding_spaces_do_not_split_a_treatment():
    """probe m10: 'DEMO-001 ' and 'DEMO-001' were two treatments of 4 sites each."""
    raw = raw_metadata()
    raw.loc[raw["plate"] == "2", "treatment"] = raw["treatment"].where(raw["treatment"].isna(), "Remdesivir ")
    raw.loc[0, "disease_condition"] = "\u00a0Mock"  # a spreadsheet's no-break space
    notes = []
    sites = build_sites_table(raw, SCHEMA, "m.csv", notes=notes)
    assert sites["treatment"].dropna().unique().tolist() == ["Remdesivir"]
    assert (sites["treatment"] == "Remdesivir").sum() == 8
    assert "m.csv, column 'treatment': surrounding spaces removed from 4 value(s), first line 14: 'Remdesivir '" in notes
    assert any("column 'disease_condition'" in note and "line 2" in note for note in notes)


def test_strip_values_empties_blank_cells_and_keeps_non_text():
    raw = pd.DataFrame({"treatment": [" A", "  ", np.nan, "B"], "site": [1, 2, 3, 4], "mixed": [" x", 5, np.nan, "y"]})
    table, notes = strip_values(raw, "m.csv")
    assert table["treatment"].iloc[0] == "A" and table["treatment"].iloc[3] == "B"
    assert table["treatment"].iloc[1:3].isna().all()
    assert table["site"].tolist() == [1, 2, 3, 4] and table["mixed"].tolist()[:2] == ["x", 5]
    assert notes == [
        "m.csv, column 'treatment': surrounding spaces removed from 2 value(s), first line 2: ' A'",
        "m.csv, column 'mixed': surrounding spaces removed from 1 value(s), first line 2: ' x'",
    ]
    assert raw["treatment"].iloc[0] == " A"  # the input is left as it was
    assert strip_values(raw_metadata(), "m.csv")[1] == []


def test_stripping_that_makes_two_sites_one_is_an_error():
    raw = raw_metadata()
    raw.loc[1, "site_id"] = raw.loc[0, "site_id"] + " "
    with pytest.raises(MetadataError, match="site_id appears more than once"):
        build_sites_table(raw, SCHEMA, "m.csv")


def test_concentrations_within_the_tolerance_are_one_dose():
    """probe m13: 3 and 3.0000001 were two doses."""
    raw = raw_metadata(plates=(1, 2, 3))
    treated = raw["treatment"].notna()
    raw.loc[treated, "treatment_conc"] = "3"
    raw.loc[treated & (raw["plate"] == "2"), "treatment_conc"] = "3.0000001"
    raw.loc[treated & (raw["plate"] == "3"), "treatment_conc"] = "3.00001"  # a different dose, kept
    notes = []
    sites = build_sites_table(raw, SCHEMA, "m.csv", notes=notes)
    assert sites.loc[sites["treatment"].notna(), "treatment_conc"].value_counts().to_dict() == {3.0: 8, 3.00001: 4}
    assert notes == [
        "m.csv: treatment 'Remdesivir': concentrations [3.0, 3.0000001] agree within 1e-06 (relative) and are one dose, "
        "3.0; 4 row(s) changed, first line 14: 3.0000001"
    ]


def test_merge_close_doses_keeps_the_most_common_value_per_treatment():
    table = pd.DataFrame({
        "treatment": ["A", "A", "A", "B", "B", None],
        "treatment_conc": [0.30000000000000004, 0.3, 0.3, 0.3, 10.0, np.nan],
    })
    merged, notes = merge_close_doses(table, "m.csv")
    assert merged["treatment_conc"].tolist()[:5] == [0.3, 0.3, 0.3, 0.3, 10.0]
    assert len(notes) == 1 and "treatment 'A'" in notes[0] and "first line 2" in notes[0]
    assert table["treatment_conc"].iloc[0] == 0.30000000000000004  # the input is left as it was
    unchanged, notes = merge_close_doses(table[table["treatment"] != "A"], "m.csv")
    assert notes == [] and unchanged["treatment_conc"].tolist()[:2] == [0.3, 10.0]


def test_dose_groups_span_at_most_the_tolerance():
    assert dose_groups(np.array([1.0, 1 + 5e-7, 1 + 9e-7, 1 + 1.5e-6, 2.0])).tolist() == [0, 0, 0, 1, 2]
    assert dose_groups(np.array([0.1, 0.3, 1.0, 3.0])).tolist() == [0, 1, 2, 3]
    assert dose_groups(np.array([5.0])).tolist() == [0] and dose_groups(np.array([])).tolist() == []


def test_zero_padded_plates_stay_text():
    """probe m8: plate '01' became 1, so its images were looked for in img/1/."""
    assert plates_are_numbers(pd.Series(["1", "2", "10", "0", "3.0"]))
    assert not plates_are_numbers(pd.Series(["01", "02"]))
    assert not plates_are_numbers(pd.Series(["1", "007"]))
    sites = build_sites_table(raw_metadata(plates=("01", "02")), SCHEMA, "m.csv")
    assert sites["plate"].tolist()[:1] == ["01"] and sites["plate"].map(type).eq(str).all()
    assert sorted(sites["plate_id"].unique()) == ["HRCE-1_01", "HRCE-1_02"]
    assert sites["site_id"].iloc[0] == "HRCE-1_01_A01_1"


def test_one_plate_spelt_with_and_without_leading_zeros_is_an_error():
    raw = raw_metadata(plates=("01", "1"))
    with pytest.raises(MetadataError, match=r"m\.csv, line 10, column 'plate': value '1': experiment 'HRCE-1' has plates \['01', '1'\], which differ only by leading zeros"):
        build_sites_table(raw, SCHEMA, "m.csv")
    # the same plate name in two experiments is two plates, as before
    raw = pd.concat([raw_metadata(plates=("01",)), raw_metadata(plates=("1",), experiment="HRCE-2")], ignore_index=True)
    assert len(build_sites_table(raw, SCHEMA, "m.csv")) == len(raw)


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_csv_separated_by_semicolons_or_tabs_is_named(tmp_path, separator):
    """probe m14: a ';' CSV gave "missing column(s) [...]" without saying why."""
    path = tmp_path / "m.csv"
    raw_metadata().to_csv(path, index=False, sep=separator)
    with pytest.raises(MetadataError, match=rf"m\.csv, line 1: the header is one column .*seems to be separated by {re.escape(repr(separator))}; deemd reads comma-separated CSV"):
        read_metadata_csv(str(path))
    assert wrong_separator(["plate", "well;x"]) is None and wrong_separator(["plate"]) is None


def run_sites_table(tmp_path, csv_path):
    """workflow/scripts/sites_table.py's main in its own process, as Snakemake runs it."""
    script = tmp_path / "run.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO / 'workflow' / 'scripts')!r})\nfrom sites_table import main\n"
        f"main({str(csv_path)!r}, {str(REPO / 'workflow' / 'schemas' / 'metadata.schema.yaml')!r}, "
        f"{str(tmp_path / 'sites.parquet')!r}, {{'site_layout': [[1, 2], [3, 4]]}}, {str(tmp_path / 'rule.log')!r})\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    return result, (tmp_path / "rule.log").read_text(encoding="utf-8")


def test_the_rule_log_records_normalised_values_and_separator_errors(tmp_path):
    raw = raw_metadata(wells=("A01", "B02", "C03"))
    raw.loc[raw["well"] == "C03", "disease_condition"] = "Active SARS-CoV-2"  # the infected controls
    raw.loc[4, "treatment"] = "Remdesivir "
    raw.loc[4:7, "treatment_conc"] = "0.30000001"
    raw.to_csv(tmp_path / "m.csv", index=False)
    result, log = run_sites_table(tmp_path, tmp_path / "m.csv")
    assert result.returncode == 0, result.stderr
    assert "WARNING " + str(tmp_path / "m.csv") + ", column 'treatment': surrounding spaces removed from 1 value(s), first line 6" in log
    assert "concentrations [0.3, 0.30000001] agree within 1e-06 (relative) and are one dose, 0.3" in log
    sites = pd.read_parquet(tmp_path / "sites.parquet")
    assert sites.dropna(subset=["treatment"]).groupby(["treatment", "treatment_conc"]).size().tolist() == [8]
    raw.to_csv(tmp_path / "semicolon.csv", index=False, sep=";")
    result, log = run_sites_table(tmp_path, tmp_path / "semicolon.csv")
    assert result.returncode == 1
    assert "ERROR failed: MetadataError: " + str(tmp_path / "semicolon.csv") + ", line 1: the header is one column" in log
    assert "seems to be separated by ';'" in log
