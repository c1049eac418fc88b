"""Radiology vocabulary for report parsing: observation synonyms, NegEx cue lists, side, zone and size words.

Written for chest radiograph reports (MIMIC-CXR / CheXpert style). Matching is on lower-cased tokens, and
when two patterns overlap the longer one wins ("perihilar haziness" is Edema, not Lung Opacity).
"""

from .. import vocab

# CheXpert observation -> mentions. "No Finding" is derived, never matched.
OBSERVATION_TERMS: dict[str, list[str]] = {
    "Atelectasis": [
        "atelectasis", "atelectases", "atelectatic", "atelectatic change", "atelectatic changes", "atelectais",
        "atelectasis/scarring", "atelectasis/airspace disease",
        "subsegmental atelectasis", "plate-like atelectasis", "platelike atelectasis", "discoid atelectasis",
        "linear atelectasis", "bibasilar atelectasis", "collapse", "lobar collapse", "lobar atelectasis",
    ],
    "Cardiomegaly": [
        "cardiomegaly", "cardiomegally", "enlarged heart", "enlarged cardiac silhouette", "cardiac enlargement",
        "heart enlargement", "enlarged heart size", "enlarged cardiac size", "borderline heart size",
        "borderline cardiac size", "borderline cardiomegaly", "top normal to mildly enlarged",
        "enlargement of the heart", "enlargement of the cardiac silhouette", "heart is enlarged",
        "heart size is enlarged", "heart is mildly enlarged", "heart is moderately enlarged",
        "heart is severely enlarged", "cardiac silhouette is enlarged", "enlarged cardiac contour",
        "increased heart size",
    ],
    "Consolidation": [
        "consolidation", "consolidations", "consolidated", "consolidative opacity", "consolidative opacities",
        "consolidative process", "airspace consolidation", "air-space consolidation",
    ],
    "Edema": [
        "edema", "pulmonary edema", "interstitial edema", "alveolar edema", "perihilar haziness",
        "kerley b lines", "kerley b-lines", "interstitial pulmonary edema", "alveolar pulmonary edema",
        "edematous", "pulmonary oedema", "oedema",
    ],
    "Enlarged Cardiomediastinum": [
        "widened mediastinum", "mediastinal widening", "enlarged mediastinum", "mediastinal enlargement",
        "enlarged cardiomediastinal silhouette", "widening of the mediastinum",
        "cardiomediastinal silhouette is enlarged", "cardiomediastinal silhouette is widened",
        "mediastinum is widened", "mediastinum is enlarged", "mediastinal contours are widened",
    ],
    "Fracture": [
        "fracture", "fractures", "rib fracture", "rib fractures", "osseous abnormality", "osseous abnormalities",
        "fractured",
    ],
    "Lung Lesion": [
        "nodule", "nodules", "pulmonary nodule", "pulmonary nodules", "mass", "masses", "lung mass",
        "lesion", "lesions", "cavitary lesion",
        "pulmonary mass", "spiculated mass", "masslike opacity", "mass-like opacity", "masslike opacification",
        "mass-like opacification", "lung nodule", "lung nodules", "micronodule", "micronodules",
        "pulmonary lesion", "lung lesion", "lung lesions", "nodularity",
    ],
    "Lung Opacity": [
        "opacity", "opacities", "opacification", "opacifications", "airspace disease", "air-space disease",
        "airspace opacity", "airspace opacities", "air-space opacity", "infiltrate", "infiltrates",
        "ground-glass opacity", "ground glass opacity", "ground-glass opacities", "haziness", "hazy opacity",
        "increased density", "patchy density",
        # an opacity described as nodular is an opacity; a nodule is named as one
        "nodular opacity", "nodular opacities", "nodular density", "nodular densities", "nodular opacification",
    ],
    "Pleural Effusion": [
        "pleural effusion", "pleural effusions", "effusion", "effusions", "pleural fluid", "pleural fluid collection",
        "pleural effusion/thickening", "effusion/thickening",
        "blunting of the costophrenic angle", "blunting of the costophrenic angles",
        "blunting of the left costophrenic angle", "blunting of the right costophrenic angle",
        "blunted costophrenic angle", "blunted costophrenic angles", "costophrenic angle blunting",
        "layering fluid", "hydrothorax",
    ],
    "Pleural Other": [
        "pleural thickening", "pleural plaque", "pleural plaques", "fibrothorax", "pleural scarring",
        "pleural calcification", "pleural calcifications",
    ],
    "Pneumonia": [
        "pneumonia", "pneumonias", "pna", "bronchopneumonia", "infectious process", "infection", "infections",
        "aspiration pneumonia", "lobar pneumonia", "pneumonic", "pneumonic infiltrate", "pneumonitis",
        "aspiration pneumonitis", "bronchopneumonic", "infectious infiltrate", "infectious infiltrates",
        "infectious or inflammatory process", "inflammatory or infectious process",
        # "infectious" alone ("of infectious etiology", "infectious small airways disease") is not counted by the
        # experts (NegBio's IU gold)
    ],
    "Pneumothorax": [
        "pneumothorax", "pneumothoraces", "pneumothoraxes", "ptx",
        "lucency without lung markings",
        "apical lucency", "visceral pleural line",
    ],
    "Support Devices": [
        "central venous catheter", "central line", "ij line", "ij catheter", "ij central line", "picc",
        "picc line", "endotracheal tube", "et tube", "ett", "enteric tube", "nasogastric tube", "ng tube",
        "og tube", "orogastric tube", "feeding tube", "dobhoff tube", "chest tube", "chest tubes",
        "pacemaker", "pacer", "pacemaker leads", "icd", "defibrillator", "sternotomy wires",
        "median sternotomy wires", "tracheostomy tube", "tracheostomy", "swan-ganz catheter",
        "pulmonary artery catheter", "pigtail catheter", "catheter", "port-a-cath", "lines and tubes",
        "support devices", "monitoring devices", "surgical clips",
    ],
}

# mentions that contain an observation's word but are another thing: matched so that they hide it
OTHER_TERMS = [
    "pericardial effusion", "pericardial effusions", "joint effusion", "nipple shadow", "nipple shadows",
    "skin fold", "skin folds", "mass effect", "lung volumes", "pleural line",
    # old healed infection (calcified granulomas) is no pneumonia
    "granulomatous infection", "granulomatous infections", "granulomatous disease", "granulomatous process",
    "tuberculous infection", "tuberculosis infection", "histoplasmosis infection", "prior infection",
    "previous infection", "old infection", "remote infection",
    # air and fluid together is its own finding for the experts (IU's MeSH "Hydropneumothorax"; NegBio's gold
    # does not count it as a pneumothorax)
    "hydropneumothorax", "hydropneumothoraces", "hydro-pneumothorax",
    # a clinical question, not a finding ("correlate for symptoms of infection")
    "symptoms of infection", "signs and symptoms of infection", "tuberculosis pneumonia",
    "history of pneumonia", "history of recurrent pneumonia", "history of pneumothorax", "prior pneumonia",
    "previous pneumonia", "old pneumonia", "remote pneumonia",
    # edema outside the lungs
    "soft tissue edema", "subcutaneous edema", "soft tissue swelling",
    # masses and lesions outside the lung (CheXpert's Lung Lesion is a lung parenchymal lesion)
    "mediastinal mass", "mediastinal masses", "anterior mediastinal mass", "thyroid mass", "pericardial mass",
    "breast mass", "soft tissue mass", "chest wall mass", "rib lesion", "rib lesions", "bone lesion",
    "bone lesions", "bony lesion", "bony lesions", "lytic lesion", "lytic lesions", "sclerotic lesion",
    "sclerotic lesions", "blastic lesion", "blastic lesions", "expansile lesion", "osseous lesion",
    "osseous lesions", "skin lesion", "skin lesions", "nipple", "nipples",
]

# statements of normality that mean "negative" for an observation without any negation cue
NORMAL_TERMS: dict[str, list[str]] = {
    "Pleural Effusion": [
        "costophrenic angles are sharp", "sharp costophrenic angles", "costophrenic angles are clear",
        "costophrenic sulci are sharp", "sharp costophrenic sulci",
    ],
    "Cardiomegaly": [
        "heart size is normal", "normal heart size", "heart size within normal limits",
        "heart size is within normal limits", "heart is normal in size", "heart is not enlarged",
        "normal cardiac silhouette", "cardiac silhouette is normal", "cardiac silhouette is within normal limits",
        "heart size is top normal", "heart size remains normal", "cardiac size is normal",
    ],
    "Enlarged Cardiomediastinum": [
        "cardiomediastinal silhouette is normal", "cardiomediastinal silhouette is unremarkable",
        "cardiomediastinal silhouette is within normal limits", "normal cardiomediastinal silhouette",
        "cardiomediastinal contours are normal", "cardiomediastinal contours are within normal limits",
        "mediastinal contours are normal", "cardiomediastinal silhouette is stable",
        "cardiomediastinal silhouette is unchanged", "mediastinum is not widened",
    ],
}

# Normal statements about the heart and the mediastinum in the forms reports use, which the CheXpert labeler
# reads as negative (its mentions "heart size", "cardiac silhouette", "mediastinum", "cardiomediastinal ..."
# negated by "normal", "unremarkable", "within normal limits", "not enlarged"): "Heart size normal.", "Heart
# size and mediastinal contours are normal.", "Normal cardiomediastinal silhouette.", "The heart and mediastinum
# are within normal limits." Each subject named in the statement gives its observation 0; "lungs are clear"
# names neither (the labeler has no mention in it, so no label). Regular expressions on the lower-cased
# sentence (`NORMAL_STATEMENT`); the verb may only be a copula, so "heart size is upper limits of normal" and
# "heart size is not normal" do not match.
_HEART_SUBJECT = r"(?:heart|cardiac)(?: size| silhouette| contours?| shadow| borders?)?"
_MEDIASTINUM_SUBJECT = (r"(?:cardio-?mediastinal|mediastinal)(?: and hilar)?(?: silhouettes?| contours?| width|"
                        r" structures)?|mediastinum")
_OTHER_SUBJECT = (r"(?:pulmonary )?(?:vascularity|vasculature)|hila|hilar (?:contours|structures)|lungs|"
                  r"pleural spaces|(?:bony|osseous) structures")
_SUBJECT = rf"(?:the )?(?:{_MEDIASTINUM_SUBJECT}|{_HEART_SUBJECT}|{_OTHER_SUBJECT})"
_SUBJECTS = rf"{_SUBJECT}(?:(?:,| and|, and|/) {_SUBJECT})*"
_COPULA = r"(?: (?:is|are|appears?|appear to be|remains?|again|otherwise|both|all|overall|xxxx))*"
_NORMAL_PREDICATE = (r"(?:normal(?: in (?:size|contour|size and contour|appearance))?|unremarkable|"
                     r"within (?:the )?normal (?:limits|range)|of normal size|normal size|not enlarged)")
NORMAL_STATEMENT = [
    rf"\b(?P<subjects>{_SUBJECTS}){_COPULA} {_NORMAL_PREDICATE}\b",
    rf"\b(?:normal|normal-sized|normal sized|normal size(?: of)?)(?: the)? (?P<subjects>{_SUBJECTS})\b",
]
NORMAL_SUBJECTS = {"Enlarged Cardiomediastinum": rf"\b(?:{_MEDIASTINUM_SUBJECT})\b",
                   "Cardiomegaly": rf"\b(?:{_HEART_SUBJECT})\b"}

NEGATION_CUES = {
    "preceding_negations": [
        "no", "not", "without", "negative for", "no evidence of", "no evidence for", "no signs of", "no sign of",
        "absence of", "absent", "free of", "clear of", "no radiographic evidence of", "no definite", "no new",
        "resolution of", "resolved", "removal of", "interval removal of", "no findings of", "rules out",
        "no focal", "there is no", "there are no", "nor", "clearing of", "interval clearing of", "simulating",
        "simulating a", "mimicking",
        "mimicking a", "not to be confused with", "rather than",
    ],
    "following_negations": [
        "is not seen", "are not seen", "not seen", "is not identified", "are not identified", "not identified",
        "is not present", "are not present", "not present", "has resolved", "have resolved", "resolved",
        "is absent", "are absent", "not appreciated", "is not appreciated", "have been removed",
        "has been removed", "was ruled out", "unlikely", "free", "removal", "removed", "has cleared",
        "have cleared", "has since cleared", "no longer seen", "no longer visualized", "no longer visible",
        "no longer present", "no longer identified", "no longer evident", "no longer apparent",
        "no longer demonstrated", "not definitely seen", "not definitely identified", "not definitely visualized",
    ],
    # phrases that contain a cue word but negate nothing ("no change in the effusion" keeps the effusion)
    "pseudo_negations": [
        "no change", "no interval change", "no significant change", "no significant interval change",
        "not only", "without change", "no increase", "no definite change", "cannot be excluded",
        "can not be excluded", "not excluded", "cannot exclude", "can not exclude", "not be excluded",
        "cannot be ruled out", "not ruled out", "not be ruled out", "cannot rule out", "not rule out",
        "not well", "not clearly", "not significantly",
    ],
    "termination": [
        "but", "however", "although", "though", "except", "aside from", "apart from", "which", "while",
        "whereas", "otherwise", "with the exception of", "there is", "there are", "there has been", "likely",
        # a semicolon joins two statements; "No pneumothorax, with new pneumonia": the finding after is stated
        ";", "with new", "with a new", "with interval", "with increased", "with persistent",
    ],
}

# Hedges come in two grades (radiology's hedging scale: "consistent with" > "probable" > "possible" > "cannot be
# excluded"). Both make a phrase uncertain. A "probable" finding (probable, likely, "A versus B", borderline) is
# one the reader commits to; a "possible" finding (may represent, could be, concerning for, cannot be excluded,
# differential includes, correlate for) is offered as one explanation among others. Study labels: see
# `pipeline.reports.score.study_labels`.
UNCERTAINTY_CUES = {
    "preceding_negations": [
        "possible", "possibly", "may represent", "may be", "might be", "might represent", "could be",
        "could represent", "can represent", "suspicious for", "suspected", "suspect", "suspicious of",
        "questionable", "question of", "question", "concerning for", "concern for", "cannot exclude",
        "can not exclude", "cannot rule out", "can not rule out", "not rule out", "differential diagnosis includes",
        "differential diagnosis", "differential includes", "differential considerations include", "differential",
        "consider", "considerations include", "suggestive of", "suggesting", "suggests", "suggest",
        "equivocal", "indeterminate", "?", "worrisome for", "raises concern for", "would be difficult to exclude",
        "difficult to exclude", "not excluded", "may reflect", "could reflect", "might reflect", "may indicate",
        "could indicate", "may be due to", "could be due to", "may relate to", "may", "might", "could",
        "correlate for", "correlate clinically for", "clinical correlation for", "evaluate for", "evaluation for",
        "assess for", "to exclude", "rule out", "to rule out", "rule-out", "obscure", "obscuring", "less likely",
        "versus less likely", "or less likely", "alternatively", "other etiologies", "include", "includes",
        "including", "regarding", "sequela of", "sequelae of", "residua of", "if",
        "in the appropriate clinical setting", "in the proper clinical setting", "in the correct clinical setting",
        "in the right clinical setting", "given the appropriate clinical setting",
    ],
    "following_negations": [
        "cannot be excluded", "can not be excluded", "not excluded", "is not excluded", "are not excluded",
        "cannot be ruled out", "can not be ruled out", "not be ruled out", "not ruled out", "is possible",
        "is suspected", "are suspected", "?", "is questioned", "not be excluded", "is considered",
        "difficult to exclude", "difficult to entirely exclude", "not entirely excluded", "may be present",
        "could be present", "are possible", "is not entirely excluded", "less likely", "cannot be entirely excluded",
        "can not be entirely excluded", "cannot be completely excluded", "cannot be totally excluded",
        "not completely excluded", "cannot be entirely ruled out", "cannot be completely ruled out",
        "is a possibility", "are a possibility", "remains a possibility", "is a consideration", "suspected",
        "is also a consideration",
    ],
    # "no opacity to suggest pneumonia": the negation governs
    "pseudo_negations": ["no possible", "unlikely", "to suggest", "to suggest a", "to suggest an",
                         "most suggestive of", "strongly suggestive of", "highly suggestive of"],
    "termination": [
        "but", "however", "although", "though", "except", "which", "while", "whereas", "no", "without",
        "there is", "there are", ";",
    ],
}
PROBABLE_CUES = {
    "preceding_negations": [
        "probable", "probably", "likely", "most likely", "versus", "vs", "vs.", "borderline", "presumed",
        "presumably", "favor", "favored", "strongly suggestive of", "most consistent with", "most suggestive of",
        "highly suggestive of",
    ],
    "following_negations": ["versus", "vs", "vs.", "is likely", "is probable", "are likely", "likely", "favored"],
    "pseudo_negations": ["less likely", "unlikely", "not likely"],
    # a comma ends it: "right base opacity, likely atelectasis" hedges the atelectasis, not the opacity
    "termination": [
        "but", "however", "although", "though", "except", "which", "while", "whereas", "no", "without",
        "there is", "there are", ",", ";",
    ],
}

# a hedge word inside a mention ("borderline heart size", "heart size is borderline enlarged"): probable
HEDGE_WORDS_INSIDE = {"borderline"}

# token patterns of the heart stated large in a sentence's own order ("heart size is mildly enlarged", "the
# heart is borderline in size", "heart size remains slightly large", "heart size is upper limits normal or
# mildly enlarged"); the words between are degree, verb and redaction words only, so "heart is not enlarged"
# does not match (it is a normal statement)
_HEART = {"LOWER": {"IN": ["heart", "cardiac"]}}
_BETWEEN = {"LOWER": {"IN": ["size", "silhouette", "contour", "contours", "shadow", "is", "remains", "appears",
                             "are", "at", "xxxx", "___", "mildly", "moderately", "slightly", "severely", "markedly",
                             "massively", "persistently", "again", "now", "stable", "still", "somewhat", "minimally",
                             "borderline", "upper", "limits", "limit", "of", "normal", "or", "to", "top", "and",
                             "stably", "also", "considerably", "significantly", "the", "very"]}, "OP": "{0,8}"}
CARDIOMEGALY_PATTERNS = [
    [_HEART, _BETWEEN, {"LOWER": {"IN": ["enlarged", "large", "enlargement"]}}],
    [_HEART, {"LOWER": {"IN": ["is", "size", "remains"]}, "OP": "{0,2}"}, {"LOWER": "borderline"},
     {"LOWER": {"IN": ["in", "for"]}, "OP": "?"}, {"LOWER": "size", "OP": "?"}],
]

# sides, zones and lobes: the shared vocabulary (pipeline/vocab.py)
LATERALITY = vocab.SIDE_WORDS
ZONES = vocab.ZONE_WORDS
DEFAULT_ZONE = vocab.DEFAULT_ZONE

# a phrase's size: a measurement as written ("8 mm", "1.2 cm", "3 x 4 cm"), else its grade word, kept as the
# report's own word ("mild" is not "small"); adverbs read as their adjective ("moderately" -> "moderate") and a
# range keeps both ends ("small to moderate")
SIZE_GRADES = {
    "trace": "trace", "tiny": "tiny", "minimal": "minimal", "small": "small", "mild": "mild", "mildly": "mild",
    "moderate": "moderate", "moderately": "moderate", "large": "large", "severe": "severe", "severely": "severe",
    "massive": "massive", "extensive": "extensive",
}
_NUMBER = r"\d+(?:\.\d+)?"
SIZE_UNITS = {"mm": "mm", "millimeter": "mm", "millimeters": "mm", "millimetre": "mm", "millimetres": "mm",
              "cm": "cm", "centimeter": "cm", "centimeters": "cm", "centimetre": "cm", "centimetres": "cm"}
# "3 x 4 cm", "3x4x5 mm", "8-mm", "1.2 cm"; not a distance ("tip 3 cm above the carina")
SIZE_MEASURED = (  # patterns as text, compiled (case-insensitive) where used, like NORMAL_STATEMENT
    rf"(?<![\w.])(?P<dims>{_NUMBER}(?:\s*(?:x|×|by)\s*{_NUMBER}){{0,2}})\s*-?\s*"
    rf"(?P<unit>{'|'.join(sorted(SIZE_UNITS, key=len, reverse=True))})\b"
    r"(?!\s+(?:above|below|from|proximal|distal|beyond|superior|inferior|lateral|medial)\b)")
SIZE_GRADE = (rf"\b(?P<grade>{'|'.join(SIZE_GRADES)})"
              rf"(?:(?:\s*-\s*|\s+)to(?:\s*-\s*|\s+)(?P<to>{'|'.join(SIZE_GRADES)}))?\b")

# tokens that end the clause a phrase is cut from
CLAUSE_BREAKS = {",", ";", ":", "and", "or", "but", "with", "without", "versus", "vs", "vs.", "which", "likely",
                 "while", "whereas", "although", "however", "nor", "(", ")", "/"}
# a phrase keeps the words after its finding only when they say where it is ("in the left lower lobe")
PLACE_PREPOSITIONS = {"in", "at", "within", "along", "involving", "of", "overlying", "projecting"}
PLACE_WORDS = {"lobe", "lung", "lungs", "zone", "field", "base", "bases", "apex", "apices", "hemithorax", "side"}
# leading words dropped from a phrase: the cue is recorded as an attribute, the phrase keeps the finding
LEADING_FILLER = {"no", "not", "there", "is", "are", "a", "an", "the", "of", "evidence", "possible", "probable",
                  "possibly", "likely", "new", "any", "definite", "focal", "again", "seen", "noted", "also",
                  "findings", "may", "represent", "could", "be", "suspicious", "for", "concerning", "questionable",
                  "cannot", "exclude", "signs", "sign", "has", "been", "to", "suggest", "this", "which", "consistent",
                  "with", "in", "otherwise", "overall", "persistent", "unchanged", "can", "early", "change", "interval",
                  "stable", "area", "areas", "exclude", "excluded", "rule", "out"}
