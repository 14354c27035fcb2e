"""A real ablation on the embedded digits, its comparison where people read it: under the sweep's table, as a W&B run
read back from its offline file, and as an HTML page opened in a real headless browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lightning_depth.ablation.wandb_report import JOB_TYPE, report_run_id
from tests.helpers.cli import CONFIGS, cli
from tests.helpers.wandb_records import offline_runs, read_run

PREACT = {"name": "preact", "design": "factorial", "factors": {"model.net.init_args.preact": [False, True]},
          "baseline": {"model.net.init_args.preact": False}, "seeds": [0, 1]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two arms × two seeds of the tiny ResNet, one epoch each; the sweep's output and its directory."""
    tmp = tmp_path_factory.mktemp("published")
    config = yaml.safe_load((CONFIGS / "tiny_resnet.yaml").read_text())
    config["trainer"].update(max_epochs=1, limit_train_batches=2)
    config["ablation"] = PREACT
    experiment = tmp / "experiment.yaml"
    experiment.write_text(yaml.safe_dump(config, sort_keys=False))
    done = cli("fit", "--config", str(experiment), "--trainer.default_root_dir", str(tmp / "runs"), "--parallel", "2")
    return done, tmp / "runs" / "preact"


@pytest.mark.slow
def test_the_sweep_prints_the_per_example_interval_and_the_seeds_advice_under_its_table(sweep):
    done, _ = sweep
    table, notes = done.stdout.split("Per-example Δ val/acc1")
    assert "| Δ val/acc1 [95% CI] | Δ val/acc1 per-example [95% CI] |" in table
    assert "- preact=true: " in notes and "over 2 seeds × 64 examples; flips: " in notes
    assert "Seeds to resolve the observed Δ in val/acc1 at 95% confidence with 80% power:" in notes


@pytest.mark.slow
def test_the_sweep_writes_one_wandb_comparison_run_and_compare_updates_it(sweep):
    _, ablation = sweep
    (first,) = offline_runs(ablation / "wandb")
    run = read_run(first)
    assert (run.run_id, run.group, run.job_type) == (report_run_id(ablation), "preact", JOB_TYPE)

    # The table holds what compare prints: per arm, mean, std, Δ and both intervals, in percent.
    (row,) = run.history
    table = json.loads((first.parent / "files" / row["comparison/path"]).read_text())
    expected = json.loads(cli("compare", str(ablation), "--format", "json", "--no-plots").stdout)
    arm = next(a for a in expected["arms"] if a["arm"] == "preact=true")["metrics"]["val/acc1"]
    found = dict(zip(table["columns"], next(r for r in table["data"] if r[0] == "preact=true"
                                             and r[table["columns"].index("metric")] == "val/acc1")))
    assert found["preact"] is True and found["n"] == 2
    assert found["mean"] == pytest.approx(100 * arm["mean"]) and found["delta"] == pytest.approx(100 * arm["delta"])
    # No t interval where every seed gave the same Δ (compare then shows none either).
    assert [found["ci95_low"], found["ci95_high"]] == (
        pytest.approx([100 * v for v in arm["ci95"]]) if arm["ci95"] else [None, None])
    assert [found["per_example_ci95_low"], found["per_example_ci95_high"]] == pytest.approx(
        [100 * v for v in arm["per_example"]["ci95"]])
    assert found["n_examples"] == 64 and [found["flips_lost"], found["flips_gained"]] == arm["per_example"]["flips"]
    # The plots as images, per-arm values in the summary.
    images = {k.split("/")[1] for k, v in row.items() if k.startswith("plots/") and k.endswith("_type")
              and v == "image-file"}
    assert {"curves_val_acc1", "curves_val_loss", "curves_train_loss"} <= images
    assert run.summary["val/acc1/preact=true/delta"] == pytest.approx(100 * arm["delta"])
    assert run.summary["val/acc1/preact=false/n"] == 2

    # Writing it again updates the same run: a second offline file with the same id, no other run.
    again = cli("compare", str(ablation), "--wandb")
    assert f"comparison run {report_run_id(ablation)}" in again.stderr and "wandb sync" in again.stderr
    assert {read_run(p).run_id for p in offline_runs(ablation / "wandb")} == {report_run_id(ablation)}
    assert len(offline_runs(ablation / "wandb")) == 2


PROBE = """<!DOCTYPE html><html><body><iframe id="page" src="PAGE" width="1600" height="1200"></iframe>
<pre id="out">not loaded</pre><script>
const frame = document.getElementById("page");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument, table = doc.getElementById("comparison");
  const size = el => { const box = el.getBoundingClientRect(); return [box.width, box.height]; };
  document.getElementById("out").textContent = JSON.stringify({
    headers: [...table.tHead.rows[0].cells].map(c => c.textContent),
    rows: [...table.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent)),
    table: size(table),
    images: [...doc.images].map(i => ({name: i.alt, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight],
                                        shown: size(i)})),
  });
});
</script></body></html>"""


@pytest.mark.slow
def test_the_html_page_renders_its_table_and_every_image_in_a_real_browser(sweep, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it: apt-get install chromium)")
    _, ablation = sweep
    page = Path(cli("compare", str(ablation), "--format", "html").stdout.strip())
    assert page == ablation / "comparison.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html, "the page loads nothing from elsewhere"
    # The page opened in a frame of a probe page, which reports what the browser laid out and decoded.
    shutil.copy(page, tmp_path / "page.html")
    (tmp_path / "probe.html").write_text(PROBE.replace("PAGE", "page.html"))
    dom = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", (tmp_path / "probe.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    seen = json.loads(dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0])
    assert "Δ val/acc1 per-example [95% CI]" in seen["headers"]
    assert [r[0] for r in seen["rows"]] == ["preact=false (baseline)", "preact=true"]
    assert seen["table"][0] > 500 and seen["table"][1] > 50
    names = {i["name"] for i in seen["images"]}
    assert {"curves_val_acc1", "curves_val_loss", "curves_train_loss"} <= names
    for image in seen["images"]:
        assert image["complete"] and min(image["natural"]) > 100 and min(image["shown"]) > 100, image
