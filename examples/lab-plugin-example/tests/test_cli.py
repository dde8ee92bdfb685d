"""`lab json-online` lists what the store holds, and names the fix in a lab without it."""

from lab.cli import main


def test_json_online_lists_each_view_version(boring_model, lab_pm, capsys):
    lab_pm(config="[tool.lab.json_online]")                     # the default path: data/online-json
    boring_model.materialize()
    assert main(["json-online"]) == 0
    assert capsys.readouterr().out.split()[:3] == ["entity_amounts", boring_model.view.version[:12], "20"]


def test_a_lab_without_the_table_is_told_how_to_add_it(bare_lab, capsys):
    assert main(["json-online"]) == 2
    assert "[tool.lab.json_online]" in capsys.readouterr().err
