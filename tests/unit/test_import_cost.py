import subprocess
import sys


def test_importing_the_celery_app_loads_no_torch():
    code = ("import sys, workers.app, workers.tasks.embed, producers.dispatcher; "
            "heavy = [m for m in ('torch', 'sentence_transformers', 'onnxruntime') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
