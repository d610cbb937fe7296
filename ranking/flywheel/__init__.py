"""The data flywheel: log what was served, watch it drift, retrain from it, try models in shadow.

See ranking/flywheel/README.md. `hook.Flywheel` is the request path's one seam (`observe`);
everything else runs on its background thread or offline (`ranking train --log`, `ranking drift`).
"""
