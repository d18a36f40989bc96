"""Fail unless a built wheel carries napari.yaml, the sample data and the sample models."""
import sys
import zipfile

REQUIRED = ["seg_explain/napari.yaml", "seg_explain/sample_data/PROVENANCE.md",
            "seg_explain/sample_data/models/brain3d/configs/metadata.json",
            "seg_explain/sample_data/models/brain3d/models/model.pt",
            "seg_explain/sample_data/models/brain2d/models/model.pt"]
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = [r for r in REQUIRED if r not in names]
n_sample = sum(1 for n in names if n.startswith("seg_explain/sample_data/"))
if missing:
    sys.exit(f"wheel {sys.argv[1]} lacks: {', '.join(missing)}")
print(f"wheel ok: napari.yaml + {n_sample} sample_data files inside {sys.argv[1]}")
