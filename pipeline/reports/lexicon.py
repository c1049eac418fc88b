"""Radiology vocabulary for report parsing: observation synonyms, NegEx cue lists, side, zone and size words.

Written for chest radiograph reports (MIMIC-CXR / CheXpert style). Matching is on lower-cased tokens, and
when two patterns overlap the longer one wins ("perihilar haziness" is Edema, not Lung Opacity).
"""

from .. import vocab

# CheXpert observation -> mentions. "No Finding" is derived, never matched.
OBSERVATION_TERMS: dict[str, list[str]] = {
    "Atelectasis": [
        "atelectasis", "atelectases", "atelectatic", "atelectatic change", "atelectatic changes",
        "subsegmental atelectasis", "plate-like atelectasis", "platelike atelectasis", "discoid atelectasis",
        "linear atelectasis", "bibasilar atelectasis", "volume loss", "collapse", "lobar collapse",
    ],
    "Cardiomegaly": [
        "cardiomegaly", "enlarged heart", "enlarged cardiac silhouette", "cardiac enlargement",
        "enlargement of the heart", "enlargement of the cardiac silhouette", "heart is enlarged",
        "heart size is enlarged", "heart is mildly enlarged", "heart is moderately enlarged",
        "heart is severely enlarged", "cardiac silhouette is enlarged", "enlarged cardiac contour",
        "increased heart size",
    ],
    "Consolidation": [
        "consolidation", "consolidations", "consolidative opacity", "consolidative opacities",
        "consolidative process", "airspace consolidation", "air-space consolidation",
    ],
    "Edema": [
        "edema", "pulmonary edema", "interstitial edema", "alveolar edema", "vascular congestion",
        "pulmonary vascular congestion", "perihilar haziness", "kerley b lines", "fluid overload",
        "chf", "congestive heart failure", "pulmonary venous congestion",
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
        "nodular opacity", "nodular opacities", "nodular density", "lesion", "lesions", "cavitary lesion",
        "pulmonary mass", "spiculated mass",
    ],
    "Lung Opacity": [
        "opacity", "opacities", "opacification", "opacifications", "airspace disease", "air-space disease",
        "airspace opacity", "airspace opacities", "air-space opacity", "infiltrate", "infiltrates",
        "ground-glass opacity", "ground glass opacity", "ground-glass opacities", "haziness", "hazy opacity",
        "increased density", "patchy density",
    ],
    "Pleural Effusion": [
        "pleural effusion", "pleural effusions", "effusion", "effusions", "pleural fluid",
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
        "pneumonia", "pneumonias", "pna", "bronchopneumonia", "infectious process", "infection",
        "aspiration pneumonia",
    ],
    "Pneumothorax": [
        "pneumothorax", "pneumothoraces", "ptx", "hydropneumothorax", "lucency without lung markings",
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
]

# statements of normality that mean "negative" for an observation without any negation cue
NORMAL_TERMS: dict[str, list[str]] = {
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

NEGATION_CUES = {
    "preceding_negations": [
        "no", "not", "without", "negative for", "no evidence of", "no evidence for", "no signs of", "no sign of",
        "absence of", "absent", "free of", "clear of", "no radiographic evidence of", "no definite", "no new",
        "resolution of", "resolved", "removal of", "interval removal of", "no findings of", "rules out",
        "no focal", "there is no", "there are no", "nor",
    ],
    "following_negations": [
        "is not seen", "are not seen", "not seen", "is not identified", "are not identified", "not identified",
        "is not present", "are not present", "not present", "has resolved", "have resolved", "resolved",
        "is absent", "are absent", "not appreciated", "is not appreciated", "have been removed",
        "has been removed", "was ruled out", "unlikely", "free", "removal", "removed",
    ],
    # phrases that contain a cue word but negate nothing ("no change in the effusion" keeps the effusion)
    "pseudo_negations": [
        "no change", "no interval change", "no significant change", "no significant interval change",
        "not only", "without change", "no increase", "no definite change", "cannot be excluded",
        "can not be excluded", "not excluded", "cannot exclude", "can not exclude", "not be excluded",
        "cannot be ruled out", "not ruled out", "not be ruled out", "cannot rule out", "not rule out",
        "no longer", "not well", "not clearly", "not significantly",
    ],
    "termination": [
        "but", "however", "although", "though", "except", "aside from", "apart from", "which", "while",
        "whereas", "otherwise", "with the exception of", "there is", "there are", "there has been", "likely",
    ],
}

UNCERTAINTY_CUES = {
    "preceding_negations": [
        "possible", "possibly", "probable", "probably", "likely", "may represent", "may be", "might be",
        "might represent", "could be", "could represent", "can represent", "suspicious for", "suspected",
        "suspect", "questionable", "question of", "concerning for", "concern for", "cannot exclude",
        "can not exclude", "cannot rule out", "can not rule out", "not rule out", "versus", "vs", "vs.",
        "differential diagnosis includes", "differential includes", "consider", "suggestive of",
        "suggesting", "suggests", "borderline", "equivocal", "indeterminate", "?", "presumed", "presumably",
        "worrisome for", "raises concern for", "would be difficult to exclude", "not excluded",
        "may reflect", "could reflect", "might reflect", "may indicate", "could indicate", "may be due to",
        "could be due to", "may relate to",
    ],
    "following_negations": [
        "cannot be excluded", "can not be excluded", "not excluded", "is not excluded", "are not excluded",
        "cannot be ruled out", "can not be ruled out", "not be ruled out", "not ruled out", "is possible",
        "is suspected", "are suspected", "versus", "vs", "vs.", "?", "is questioned", "not be excluded",
        "is likely", "is probable", "is considered",
    ],
    "pseudo_negations": ["no possible", "unlikely"],
    "termination": [
        "but", "however", "although", "though", "except", "which", "while", "whereas", "no", "without",
        "there is", "there are",
    ],
}

# sides, zones and lobes: the shared vocabulary (pipeline/vocab.py)
LATERALITY = vocab.SIDE_WORDS
ZONES = vocab.ZONE_WORDS
DEFAULT_ZONE = vocab.DEFAULT_ZONE

SIZES = {
    "trace": "small", "tiny": "small", "small": "small", "minimal": "small", "mild": "small", "mildly": "small",
    "moderate": "moderate", "moderately": "moderate", "large": "large", "severe": "large", "severely": "large",
    "massive": "large", "extensive": "large",
}

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
