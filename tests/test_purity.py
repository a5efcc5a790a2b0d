"""The pure core (models, pipeline) pulls in no I/O libraries."""

import subprocess
import sys


def test_models_and_pipeline_import_no_io_libraries() -> None:
    code = (
        "import sys, statekit.models, statekit.pipeline, statekit.schema\n"
        "heavy = ('sqlalchemy', 'ruamel', 'filelock', 'yaml', 'orjson', 'alembic')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
