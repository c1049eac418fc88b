"""The 14 CheXpert observations, in the column order of the CheXpert labeler and MIMIC-CXR's tables.

Label values: 1 positive, 0 negative, -1 uncertain, NaN not mentioned (never 0 for "unknown").
"""

OBSERVATIONS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]
