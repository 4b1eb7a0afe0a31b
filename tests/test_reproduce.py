"""``jaxdiff reproduce``: --list names the reproductions; the GMM Diffusion Classifier's quick
mode writes its page, JSON and plot and prints the paper's claim beside our number."""
import json
import os
import subprocess
import sys

from jaxdiff import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "jaxdiff.reproduce", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_list_names_the_diffusion_classifier_and_sampler_reproductions():
    proc = _cli("--list")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith(" ")]
    assert {"diffusion_classifier_gmm", "diffusion_classifier_mnist5k",
            "samplers_gmm"} <= set(names), proc.stdout
    assert "Li, Prabhudesai" in proc.stdout and "claim:" in proc.stdout


def test_unknown_name_and_missing_model_are_one_line_errors(tmp_path):
    proc = _cli("diffusion_classifer_gmm")
    assert proc.returncode == 2
    assert "did you mean 'diffusion_classifier_gmm'" in proc.stderr, proc.stderr
    proc = _cli("diffusion_classifier_mnist5k", "--workdir", str(tmp_path / "none"),
                "--out-dir", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--mode=train" in proc.stderr and "python3 -m jaxdiff.main" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_gmm_diffusion_classifier_quick_writes_page_json_and_plot(tmp_path, capsys):
    name = "diffusion_classifier_gmm"
    status = reproduce.main([name, "--quick", "--no-progress", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"{name}.{ext}").stat().st_size > 0, ext
    record = json.loads((tmp_path / f"{name}.json").read_text())
    rep = reproduce.REPRODUCTIONS[name]
    assert record["claim"] == rep.claim and record["meta"]["quick"] is True
    result = record["result"]
    # the claim is printed beside the number measured now
    assert f"the paper's claim: {rep.claim}" in out
    assert f"our number:        {rep.ours(result)}" in out
    page = (tmp_path / f"{name}.md").read_text()
    assert rep.claim in page and rep.ours(result) in page and "quick mode" in page
    # the exact oracle: the shared-noise classifier is close to Bayes, above chance (0.2)
    top = result["curves"]["uniform/shared"][-1]
    assert top["accuracy"] > 0.8 and abs(top["accuracy"] - result["bayes_accuracy"]) < 0.05
