from titlegen.showcase import lead, showcase

ARTICLES = [
    {"id": "1", "maintext": "臺北市政府今天宣布，明年起將在全市增設五十座公共自行車站，並延長夜間營運時間至凌晨一點。"},
    {"id": "2", "maintext": "氣象局表示，受到東北季風影響，北部地區今晚氣溫將降至十二度，山區可能出現結冰現象。"},
]
REFERENCES = [
    {"id": "2", "title": "東北季風南下 北部今晚低溫十二度"},
    {"id": "1", "title": "北市明年增設五十座公共自行車站"},
]
PREDICTIONS = [
    {"id": "1", "title": "臺北市明年起增設五十座公共自行車站"},
    {"id": "2", "title": "北部今晚氣溫將降至十二度"},
]


def test_the_table_shows_openings_titles_and_references_and_scores_model_and_lead_alike():
    report = showcase(ARTICLES, REFERENCES, PREDICTIONS, rows=1, segmenters=["char"])
    lines = report.splitlines()
    opening = ARTICLES[0]["maintext"][:36]
    assert lines[2] == f"| {opening}… | {PREDICTIONS[0]['title']} | {REFERENCES[1]['title']} |"
    assert "氣象局" not in report, "one row asked for"
    model = next(line for line in lines if line.startswith("| model |"))
    lead30 = next(line for line in lines if line.startswith("| lead-30 |"))
    assert float(model.split("|")[2].split("/")[0]) > float(lead30.split("|")[2].split("/")[0])
    assert "mean 15.5, median 15.5, 15-16" in next(line for line in lines if line.startswith("| reference |"))
    assert lead([" 北市\n明年 "], 3) == ["北市 "]
