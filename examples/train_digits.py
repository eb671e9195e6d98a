"""A real (small) training run: scikit-learn's bundled digits, no downloads.

    fabriek submit --cpus 2 --mem 2G --time 10m --name digits -- python examples/train_digits.py

Writes the model and its metrics to $FABRIEK_OUTPUT_DIR (the current directory when run by hand).
"""

from __future__ import annotations

import json
import os
import pickle
import time
import warnings
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, classification_report
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier


def main() -> None:
    # One epoch per fit() call, so that progress shows in the log; sklearn warns about each.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    out = Path(os.environ.get("FABRIEK_OUTPUT_DIR", "."))
    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    model = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=1, warm_start=True, random_state=0)
    began = time.perf_counter()
    epochs = int(os.environ.get("EPOCHS", "60"))
    for epoch in range(1, epochs + 1):
        model.fit(x_train, y_train)
        if epoch % 10 == 0 or epoch == epochs:
            acc = accuracy_score(y_test, model.predict(x_test))
            print(f"epoch {epoch:3d}  loss {model.loss_:.4f}  test accuracy {acc:.4f}", flush=True)
    predicted = model.predict(x_test)
    metrics = {
        "test_accuracy": accuracy_score(y_test, predicted),
        "epochs": epochs,
        "train_samples": len(x_train),
        "test_samples": len(x_test),
        "train_seconds": round(time.perf_counter() - began, 3),
    }
    with open(out / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "report.txt").write_text(classification_report(y_test, predicted))
    print(f"test accuracy {metrics['test_accuracy']:.4f}; model and metrics in {out}", flush=True)


if __name__ == "__main__":
    main()
