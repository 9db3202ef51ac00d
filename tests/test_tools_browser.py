"""The Utilities tab in headless Chromium (issue #18): the real studio; the tab inspects and resizes a LoRA file
written by diffusers, and extracts a LoRA from a full fine-tune run in the studio's runs/."""
import pytest

from conftest import make_images, run_training, sets
from lora_checks import load_base
from tools_loras import BASE, save_diffusers_lora
from engine.tools import lora_file, names
from ui.testing import StudioServer, chromium_path, open_page, open_tab

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium_path() is None, reason="no Chromium: ./launch.sh test installs it")]
pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with StudioServer(tmp_path_factory.mktemp("studio-home")) as srv:
        yield srv


def test_the_utilities_tab_inspects_and_resizes_a_lora(server, browser, tmp_path):
    lora = save_diffusers_lora(load_base(BASE, "sd1"), tmp_path / "lora", rank=4, spread=2.0)
    page = open_page(browser, server.url)
    open_tab(page, "Utilities")
    page.locator("#utilities-file textarea, #utilities-file input").first.fill(str(lora))
    page.locator("#utilities-base textarea, #utilities-base input").first.fill(BASE)
    page.locator("#utilities-inspect").click()
    page.wait_for_function("() => document.querySelector('#utilities-report textarea').value.includes('layout')",
                           timeout=120_000)
    report = page.locator("#utilities-report textarea").input_value()
    assert "layout: diffusers" in report and "rank 4" in report and "diffusers: loads every key" in report

    page.locator("#utilities-rank input").fill("2")
    page.locator("#utilities-name textarea, #utilities-name input").first.fill("half")
    page.locator("#utilities-resize").click()
    page.wait_for_function("() => /Frobenius|⚠/.test(document.querySelector('#utilities-status textarea').value)",
                           timeout=120_000)
    status = page.locator("#utilities-status textarea").input_value()
    out = server.home / "utilities" / "half.safetensors"
    assert status.startswith(f"Wrote {out}") and "ranks [2]" in status, status
    arch = names.model_arch(BASE)
    resized, original = lora_file.read(out, arch), lora_file.read(lora, arch)
    assert resized.modules.keys() == original.modules.keys()
    assert {m.rank for m in resized.modules.values()} == {2}

    # a name that leaves the folder is refused in words, and nothing is written
    page.locator("#utilities-name textarea, #utilities-name input").first.fill("../escape")
    page.locator("#utilities-resize").click()
    page.wait_for_function("() => document.querySelector('#utilities-status textarea').value.startsWith('⚠')",
                           timeout=60_000)
    assert "not a plain name" in page.locator("#utilities-status textarea").input_value()
    assert not (server.home / "escape.safetensors").exists()
    page.close()


def test_the_utilities_tab_extracts_a_lora_from_a_full_run(server, browser, tmp_path):
    run_training(sets(pretrained_model_name_or_path=BASE, method="full", resolution=64, learning_rate=1e-3,
                      lr_warmup_steps=0, seed=3, train_batch_size=2, report_to="none", max_train_steps=1,
                      train_data_dir=make_images(tmp_path / "data"), output_dir=server.home / "runs",
                      adaptor_name="ft"), launch=False)
    page = open_page(browser, server.url)
    open_tab(page, "Utilities")
    page.locator("#utilities-refresh").click()
    box = page.locator("#utilities-run input")
    box.click()
    page.get_by_role("option", name="ft", exact=True).click()
    page.locator("#utilities-extract-rank input").fill("8")
    page.locator("#utilities-extract-name textarea, #utilities-extract-name input").first.fill("ft-r8")
    page.locator("#utilities-extract").click()
    page.wait_for_function(
        "() => /Frobenius|⚠/.test(document.querySelector('#utilities-extract-status textarea').value)",
        timeout=180_000)
    status = page.locator("#utilities-extract-status textarea").input_value()
    out = server.home / "utilities" / "ft-r8.safetensors"
    assert status.startswith(f"Wrote {out}"), status
    lf = lora_file.read(out, names.model_arch(BASE))
    assert lf.components == {"unet"} and max(m.rank for m in lf.modules.values()) == 8
    page.close()
