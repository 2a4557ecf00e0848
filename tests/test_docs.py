"""Documentation generated from the code stays in step with it."""
from pathlib import Path

from kdbench.record import schema

ROOT = Path(__file__).resolve().parents[1]


def test_record_schema_doc_matches_the_schema():
    doc = (ROOT / "docs" / "record-schema.md").read_text()
    assert schema.markdown_table().rstrip() in doc, "regenerate docs/record-schema.md from kdbench.record.schema"


def test_readme_layers_name_existing_packages():
    readme = (ROOT / "README.md").read_text()
    for package in ("core", "running", "engine", "record", "measurement", "results", "authoring", "testing", "cli"):
        assert f"kdbench/{package}/" in readme
        assert (ROOT / "kdbench" / package / "__init__.py").exists()
