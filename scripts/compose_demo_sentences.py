"""Compose the demo corpus's Marathi sentences (src/whisper_tune/assets/demo_sentences_mr.txt).

    python scripts/compose_demo_sentences.py            # rewrites the asset, prints counts

The asset holds the 250 sentences written by hand for whisper-tune first, then sentences
composed here from grammatical templates: each template family fills slots from its own
vocabulary (names and kin with gender, verbs with their tense forms, objects with gender
so a past tense and an adjective agree, cities with their case forms, number words) and
draws a seeded sample, so the file is the same on every run. All of it was written for
whisper-tune and is dedicated to the public domain (CC0 1.0).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

ASSET = Path(__file__).resolve().parents[1] / "src/whisper_tune/assets/demo_sentences_mr.txt"
HAND_WRITTEN = 250  # the first lines of the asset, kept as they are
SEED = 25  # issue 25
TARGET = 1400  # composed sentences added after the hand-written ones
HEADER = """\
# Marathi sentences for whisper-tune's demo corpus (make-demo-data speaks them with espeak-ng).
# Written for whisper-tune by its contributors: the first 250 by hand, the rest composed by
# scripts/compose_demo_sentences.py from its templates and vocabularies. Dedicated to the
# public domain under CC0 1.0 (https://creativecommons.org/publicdomain/zero/1.0/).
# One sentence a line; lines starting with # are comments.
"""

# --- who: (nominative, oblique stem, gender m/f); ergative = oblique + ने, dative + ला
NAMES_M = "राहुल सुनील अमित विजय संजय प्रकाश गणेश महेश अजय रमेश नितीन सचिन मंगेश आनंद विनोद दीपक सागर योगेश राजेश अनिल"
NAMES_F = (
    "सीमा प्रिया अंजली स्नेहा पूजा माधुरी सुनीता कविता मीना रेखा शालिनी वैशाली अश्विनी मनीषा सविता नेहा गौरी सायली रुपाली वंदना"
)
KIN = [
    ("माझा भाऊ", "माझ्या भावा", "m"),
    ("माझी बहीण", "माझ्या बहिणी", "f"),
    ("माझा मित्र", "माझ्या मित्रा", "m"),
    ("माझी मैत्रीण", "माझ्या मैत्रिणी", "f"),
    ("आमचा शेजारी", "आमच्या शेजाऱ्या", "m"),
    ("आमची शेजारीण", "आमच्या शेजारणी", "f"),
    ("माझा मुलगा", "माझ्या मुला", "m"),
    ("माझी मुलगी", "माझ्या मुली", "f"),
    ("माझा मामा", "माझ्या मामा", "m"),
    ("माझी मावशी", "माझ्या मावशी", "f"),
]
PEOPLE = [(n, n, "m") for n in NAMES_M.split()] + [(n, n, "f") for n in NAMES_F.split()] + KIN

# --- cities: (nominative, dative "to", locative "in")
CITIES = [
    ("पुणे", "पुण्याला", "पुण्यात"),
    ("मुंबई", "मुंबईला", "मुंबईत"),
    ("नाशिक", "नाशिकला", "नाशिकमध्ये"),
    ("नागपूर", "नागपूरला", "नागपुरात"),
    ("कोल्हापूर", "कोल्हापूरला", "कोल्हापुरात"),
    ("सातारा", "साताऱ्याला", "साताऱ्यात"),
    ("सांगली", "सांगलीला", "सांगलीत"),
    ("सोलापूर", "सोलापूरला", "सोलापुरात"),
    ("औरंगाबाद", "औरंगाबादला", "औरंगाबादमध्ये"),
    ("अमरावती", "अमरावतीला", "अमरावतीत"),
    ("लातूर", "लातूरला", "लातुरात"),
    ("जळगाव", "जळगावला", "जळगावात"),
    ("रत्नागिरी", "रत्नागिरीला", "रत्नागिरीत"),
    ("ठाणे", "ठाण्याला", "ठाण्यात"),
    ("गोवा", "गोव्याला", "गोव्यात"),
    ("नांदेड", "नांदेडला", "नांदेडमध्ये"),
    ("अकोला", "अकोल्याला", "अकोल्यात"),
    ("चंद्रपूर", "चंद्रपूरला", "चंद्रपुरात"),
    ("दिल्ली", "दिल्लीला", "दिल्लीत"),
    ("बेळगाव", "बेळगावला", "बेळगावात"),
    ("अलिबाग", "अलिबागला", "अलिबागमध्ये"),
    ("पंढरपूर", "पंढरपूरला", "पंढरपुरात"),
]
NUMBERS = (
    "दोन तीन चार पाच सहा सात आठ नऊ दहा अकरा बारा तेरा चौदा पंधरा सोळा सतरा अठरा वीस पंचवीस तीस "
    "पस्तीस चाळीस पन्नास साठ सत्तर ऐंशी नव्वद शंभर दोनशे पाचशे"
).split()
HOURS = {  # part of the day -> the clock hours said with it
    "सकाळी": "सहा सात आठ नऊ दहा अकरा".split(),
    "दुपारी": "बारा एक दोन तीन चार".split(),
    "संध्याकाळी": "पाच सहा सात".split(),
    "रात्री": "आठ नऊ दहा अकरा".split(),
}

# --- times, by the tenses they allow
T_HABIT = [
    "रोज",
    "दररोज",
    "दर रविवारी",
    "दर सोमवारी",
    "दर शनिवारी",
    "नेहमी",
    "रोज सकाळी",
    "रोज संध्याकाळी",
    "दर आठवड्याला",
    "सुट्टीच्या दिवशी",
]
T_PAST = [
    "काल",
    "काल सकाळी",
    "काल रात्री",
    "परवा",
    "मागच्या आठवड्यात",
    "मागच्या महिन्यात",
    "गेल्या वर्षी",
    "आज सकाळी",
    "दोन दिवसांपूर्वी",
]
T_FUT = [
    "उद्या",
    "उद्या सकाळी",
    "उद्या संध्याकाळी",
    "पुढच्या आठवड्यात",
    "पुढच्या महिन्यात",
    "पुढच्या वर्षी",
    "आज रात्री",
    "लवकरच",
    "रविवारी",
]
T_NOW = ["आत्ता", "सध्या", "आता"]

# --- transitive verbs: pres stem (+तो/ते), progressive, future 3sg/1sg/1pl, future "णार" stem,
# past stem (+ा/ी/े agreeing with the object), places where it happens, objects (noun, gender, adjectives)
ADJ = {  # adjective -> (m, f, n); invariant ones repeat
    "नवा": ("नवा", "नवी", "नवे"),
    "जुना": ("जुना", "जुनी", "जुने"),
    "मोठा": ("मोठा", "मोठी", "मोठे"),
    "छोटा": ("छोटा", "छोटी", "छोटे"),
    "चांगला": ("चांगला", "चांगली", "चांगले"),
    "ताजा": ("ताजा", "ताजी", "ताजे"),
    "गरम": ("गरम", "गरम", "गरम"),
    "गोड": ("गोड", "गोड", "गोड"),
    "लांब": ("लांब", "लांब", "लांब"),
    "सुंदर": ("सुंदर", "सुंदर", "सुंदर"),
    "महाग": ("महाग", "महाग", "महाग"),
    "स्वस्त": ("स्वस्त", "स्वस्त", "स्वस्त"),
    "निळा": ("निळा", "निळी", "निळे"),
    "लाल": ("लाल", "लाल", "लाल"),
    "पिवळा": ("पिवळा", "पिवळी", "पिवळे"),
    "हिरवा": ("हिरवा", "हिरवी", "हिरवे"),
    "पांढरा": ("पांढरा", "पांढरी", "पांढरे"),
    "काळा": ("काळा", "काळी", "काळे"),
    "मजेदार": ("मजेदार", "मजेदार", "मजेदार"),
    "कंटाळवाणा": ("कंटाळवाणा", "कंटाळवाणी", "कंटाळवाणे"),
    "महत्त्वाचा": ("महत्त्वाचा", "महत्त्वाची", "महत्त्वाचे"),
    "तिखट": ("तिखट", "तिखट", "तिखट"),
    "खमंग": ("खमंग", "खमंग", "खमंग"),
}
G = {"m": 0, "f": 1, "n": 2}
PAST_END = {"m": "ा", "f": "ी", "n": "े"}
WHICH = {"m": "कोणता", "f": "कोणती", "n": "कोणते"}


def obj(spec: str) -> list[tuple[str, str, list[str]]]:
    """'आंबा:m:गोड,ताजा पोळी:f:गरम' -> [(noun, gender, adjectives)]."""
    out = []
    for item in spec.split():
        noun, gender, *adjs = item.split(":")
        out.append((noun.replace("_", " "), gender, adjs[0].split(",") if adjs and adjs[0] else []))
    return out


VERBS = [
    {
        "pres": "वाच",
        "prog": "वाचत",
        "fut": ("वाचेल", "वाचेन", "वाचू"),
        "nar": "वाचणार",
        "past": "वाचल",
        "places": ["ग्रंथालयात", "बागेत", "घरी", "गाडीत", "वर्गात", "ओसरीवर"],
        "objects": obj(
            "पुस्तक:n:नवा,जुना,मजेदार वर्तमानपत्र:n: कादंबरी:f:नवा,जुना,मोठा कविता:f:सुंदर,लांब गोष्ट:f:मजेदार,लांब "
            "लेख:m:लांब,महत्त्वाचा धडा:m:नवा,लांब अहवाल:m:महत्त्वाचा,लांब मासिक:n:नवा,जुना बातमी:f:महत्त्वाचा "
            "पत्र:n:जुना,लांब ग्रंथ:m:जुना,मोठा"
        ),
    },
    {
        "pres": "लिहि",
        "prog": "लिहीत",
        "fut": ("लिहील", "लिहीन", "लिहू"),
        "nar": "लिहिणार",
        "past": "लिहिल",
        "places": ["वहीत", "कार्यालयात", "घरी", "वर्गात", "संगणकावर"],
        "objects": obj(
            "पत्र:n:लांब निबंध:m:लांब,चांगला कविता:f:सुंदर,नवा गोष्ट:f:मजेदार,नवा अर्ज:m:नवा लेख:m:महत्त्वाचा,नवा "
            "अहवाल:m:महत्त्वाचा उत्तर:n:चांगला गाणे:n:नवा,सुंदर पुस्तक:n:नवा निरोप:m:छोटा"
        ),
    },
    {
        "pres": "खा",
        "prog": "खात",
        "fut": ("खाईल", "खाईन", "खाऊ"),
        "nar": "खाणार",
        "past": "खाल्ल",
        "places": ["घरी", "हॉटेलमध्ये", "शाळेत", "जत्रेत", "मित्रांसोबत", "मधल्या सुट्टीत"],
        "objects": obj(
            "आंबा:m:गोड,ताजा,पिवळा पोळी:f:गरम भाकरी:f:गरम,ताजा भात:m:गरम लाडू:m:गोड,मोठा शिरा:m:गरम,गोड "
            "उपमा:m:गरम खिचडी:f:गरम,तिखट पेरू:m:हिरवा,गोड सफरचंद:n:लाल,ताजा मिसळ:f:तिखट वडापाव:m:गरम,तिखट "
            "थालीपीठ:n:खमंग,गरम पुरणपोळी:f:गोड केळे:n:पिवळा,गोड मोदक:m:गोड चिवडा:m:खमंग,तिखट"
        ),
    },
    {
        "pres": "पाह",
        "prog": "पाहत",
        "fut": ("पाहील", "पाहीन", "पाहू"),
        "nar": "पाहणार",
        "past": "पाहिल",
        "places": ["मित्रांसोबत", "कुटुंबासोबत", "प्रवासात"],
        "objects": obj(
            "सिनेमा:m:नवा,जुना,मजेदार,कंटाळवाणा नाटक:n:नवा,मजेदार,लांब सामना:m:मोठा,महत्त्वाचा किल्ला:m:जुना,मोठा "
            "कार्यक्रम:m:नवा,मजेदार मालिका:f:नवा,जुना,कंटाळवाणा चित्र:n:सुंदर,जुना प्रदर्शन:n:मोठा,सुंदर "
            "मंदिर:n:जुना,सुंदर धबधबा:m:मोठा,सुंदर"
        ),
    },
    {
        "pres": "विकत घे",
        "prog": "विकत घेत",
        "fut": ("विकत घेईल", "विकत घेईन", "विकत घेऊ"),
        "nar": "विकत घेणार",
        "past": "विकत घेतल",
        "places": ["बाजारातून", "दुकानातून", "जत्रेतून", "शहरातून", "मॉलमधून"],
        "habit": False,
        "objects": obj(
            "सदरा:m:निळा,पांढरा,नवा,महाग साडी:f:लाल,हिरवा,सुंदर,महाग घड्याळ:n:नवा,महाग,स्वस्त पुस्तक:n:नवा,जुना "
            "सायकल:f:नवा,लाल,काळा छत्री:f:काळा,मोठा,निळा मोबाईल:m:नवा,महाग,स्वस्त पिशवी:f:मोठा,छोटा "
            "टोपी:f:पांढरा,छोटा दप्तर:n:नवा,निळा पलंग:m:मोठा,जुना कपाट:n:मोठा,जुना गाडी:f:नवा,जुना,पांढरा "
            "दिवा:m:नवा,छोटा"
        ),
    },
    {
        "pres": "बनव",
        "prog": "बनवत",
        "fut": ("बनवेल", "बनवेन", "बनवू"),
        "nar": "बनवणार",
        "past": "बनवल",
        "places": ["स्वयंपाकघरात", "घरी", "सणासाठी", "पाहुण्यांसाठी", "मुलांसाठी"],
        "objects": obj(
            "चहा:m:गरम,गोड भाजी:f:तिखट,ताजा पोळी:f:गरम खिचडी:f:गरम आमटी:f:तिखट,गरम शिरा:m:गोड केक:m:मोठा,गोड "
            "लाडू:m:गोड सरबत:n:गोड,थंड पोहे:x: उपमा:m:गरम"
        ),
    },
    {
        "pres": "ऐक",
        "prog": "ऐकत",
        "fut": ("ऐकेल", "ऐकेन", "ऐकू"),
        "nar": "ऐकणार",
        "past": "ऐकल",
        "places": ["रेडिओवर", "मंदिरात", "सभेत", "घरी", "प्रवासात"],
        "objects": obj(
            "गाणे:n:जुना,नवा,सुंदर बातमी:f:महत्त्वाचा भाषण:n:लांब,कंटाळवाणा,महत्त्वाचा गोष्ट:f:मजेदार,जुना "
            "कीर्तन:n:लांब,सुंदर पोवाडा:m:जुना,लांब अभंग:m:जुना,सुंदर"
        ),
    },
    {
        "pres": "उघड",
        "prog": "उघडत",
        "fut": ("उघडेल", "उघडेन", "उघडू"),
        "nar": "उघडणार",
        "past": "उघडल",
        "places": ["हळूच", "घाईघाईने", "जोरात", "काळजीपूर्वक"],
        "objects": obj("दार:n:मोठा,जुना खिडकी:f:छोटा पेटी:f:जुना,लाल दुकान:n:नवा,छोटा डबा:m:मोठा कपाट:n:जुना,मोठा"),
    },
    {
        "pres": "स्वच्छ कर",
        "prog": "स्वच्छ करत",
        "fut": ("स्वच्छ करेल", "स्वच्छ करेन", "स्वच्छ करू"),
        "nar": "स्वच्छ करणार",
        "past": "स्वच्छ केल",
        "places": ["सणापूर्वी", "मनापासून", "नीट", "झाडूने"],
        "objects": obj("खोली:f:मोठा,छोटा अंगण:n:मोठा स्वयंपाकघर:n: वर्ग:m: ओटा:m: गच्ची:f: तलाव:m:जुना,छोटा"),
    },
    {
        "pres": "दुरुस्त कर",
        "prog": "दुरुस्त करत",
        "fut": ("दुरुस्त करेल", "दुरुस्त करेन", "दुरुस्त करू"),
        "nar": "दुरुस्त करणार",
        "past": "दुरुस्त केल",
        "places": ["घरी", "स्वतः", "काळजीपूर्वक"],
        "habit": False,
        "objects": obj("सायकल:f:जुना घड्याळ:n:जुना पंखा:m:जुना नळ:m: दिवा:m: गाडी:f:जुना छप्पर:n: रेडिओ:m:जुना कुंपण:n:"),
    },
    {
        "pres": "शोध",
        "prog": "शोधत",
        "fut": ("शोधेल", "शोधेन", "शोधू"),
        "nar": "शोधणार",
        "past": "शोधल",
        "places": ["घरभर", "खोलीत", "पिशवीत", "कपाटात"],
        "habit": False,
        "objects": obj(
            "चावी:f:हरवलेला चष्मा:m:काळा पुस्तक:n:जुना पाकीट:n:हरवलेला,काळा अंगठी:f:हरवलेला पेन:n:निळा,लाल कागद:m:महत्त्वाचा"
        ),
    },
    {
        "pres": "आण",
        "prog": "आणत",
        "fut": ("आणेल", "आणेन", "आणू"),
        "nar": "आणणार",
        "past": "आणल",
        "places": ["बाजारातून", "गावाहून", "दुकानातून", "शेतातून", "शहरातून"],
        "objects": obj("दूध:n:ताजा भाजी:f:ताजा केळे:n:पिवळा कलिंगड:n:मोठा गूळ:m: तांदूळ:m: मध:m: लोणचे:n:तिखट कैरी:f:हिरवा"),
    },
    {
        "pres": "पाठव",
        "prog": "पाठवत",
        "fut": ("पाठवेल", "पाठवेन", "पाठवू"),
        "nar": "पाठवणार",
        "past": "पाठवल",
        "places": ["टपालाने", "ईमेलने", "मित्राकडे", "घाईने", "कार्यालयातून"],
        "objects": obj("पत्र:n:लांब निरोप:m:छोटा,महत्त्वाचा पार्सल:n:मोठा भेटवस्तू:f:सुंदर अर्ज:m: संदेश:m:महत्त्वाचा फोटो:m:जुना"),
    },
]
ADJ["हरवलेला"] = ("हरवलेला", "हरवलेली", "हरवलेले")
ADJ["थंड"] = ("थंड", "थंड", "थंड")


def people(rng):
    return rng.choice(PEOPLE)


def noun_phrase(rng, noun, gender, adjs, p_adj=0.5):
    if adjs and gender in G and rng.random() < p_adj:
        return f"{ADJ[rng.choice(adjs)][G[gender]]} {noun}"
    return noun


def transitive(rng) -> str:
    v = rng.choice(VERBS)
    noun, gender, adjs = rng.choice(v["objects"])
    if gender == "x":  # plural object (पोहे): present forms only
        gender = None
    who, obl, sex = people(rng)
    np_ = noun_phrase(rng, noun, gender, adjs)
    place = rng.choice(v["places"]) if rng.random() < 0.6 else ""
    pres = v["pres"] + ("तो" if sex == "m" else "ते")
    kind = rng.choice(["habit", "past", "past", "fut", "nar", "now", "neg", "q_when", "q_which", "q_where", "me", "we"])
    if gender is None and kind in ("past", "q_which", "q_where"):
        kind = "habit"
    if not v.get("habit", True) and kind in ("habit", "neg"):
        kind = "fut"
    parts: list[str]
    if kind == "habit":
        parts = [who, rng.choice(T_HABIT), place, np_, pres]
    elif kind == "past":
        parts = [obl + "ने", rng.choice(T_PAST), place, np_, v["past"] + PAST_END[gender]]
    elif kind == "fut":
        parts = [who, rng.choice(T_FUT), place, np_, v["fut"][0]]
    elif kind == "nar":
        parts = [who, rng.choice(T_FUT), place, np_, v["nar"], "आहे"]
    elif kind == "now":
        parts = [who, rng.choice(T_NOW), place, np_, v["prog"], "आहे"]
    elif kind == "neg":
        parts = [who, rng.choice(["कधीच", "आजकाल", "रात्री", "सहसा"]), np_, v["prog"], "नाही"]
    elif kind == "q_when":
        return " ".join(x for x in [who, np_, "कधी", v["fut"][0]] if x) + "?"
    elif kind == "q_which":
        return " ".join([obl + "ने", rng.choice(T_PAST), WHICH[gender], noun, v["past"] + PAST_END[gender]]) + "?"
    elif kind == "q_where":
        return " ".join([obl + "ने", np_, "कुठे", v["past"] + PAST_END[gender]]) + "?"
    elif kind == "me":
        tense = rng.choice(["fut", "past", "habit"]) if gender else "fut"
        if tense == "fut":
            parts = ["मी", rng.choice(T_FUT), place, np_, v["fut"][1]]
        elif tense == "past":
            parts = ["मी", rng.choice(T_PAST), place, np_, v["past"] + PAST_END[gender]]
        elif v.get("habit", True):
            parts = ["मी", rng.choice(T_HABIT), place, np_, v["pres"] + rng.choice(["तो", "ते"])]
        else:
            parts = ["मी", rng.choice(T_FUT), place, np_, v["nar"], "आहे"]
    else:  # we
        tense = rng.choice(["fut", "past", "now"]) if gender else "fut"
        if tense == "fut":
            parts = ["आम्ही", rng.choice(T_FUT), place, np_, v["fut"][2]]
        elif tense == "past":
            parts = ["आम्ही", rng.choice(T_PAST), place, np_, v["past"] + PAST_END[gender]]
        else:
            parts = ["आम्ही", rng.choice(T_NOW), place, np_, v["prog"], "आहोत"]
    return " ".join(x for x in parts if x) + "."


# --- motion: go/come to a place or city, by a means, for a purpose
DESTS = [
    "बाजारात",
    "शाळेत",
    "कार्यालयात",
    "मंदिरात",
    "बागेत",
    "ग्रंथालयात",
    "दवाखान्यात",
    "बँकेत",
    "शेतात",
    "मैदानावर",
    "समुद्रकिनारी",
    "बसस्थानकावर",
    "मित्राकडे",
    "आजोळी",
    "जत्रेला",
    "लग्नाला",
    "सभेला",
    "डोंगरावर",
]
MEANS = ["बसने", "रेल्वेने", "सायकलने", "पायी", "रिक्षाने", "गाडीने", "विमानाने", "दुचाकीवरून"]
LOCAL_MEANS = ["बसने", "सायकलने", "पायी", "रिक्षाने", "गाडीने", "दुचाकीवरून"]  # within a town
PURPOSE = ["कामासाठी", "खरेदीसाठी", "फिरायला", "शिकायला", "परीक्षेसाठी", "उपचारासाठी", "नातेवाइकांना भेटायला", "सुट्टीसाठी"]
GO = {  # verb: pres stem, prog, fut 3sg/1sg/1pl, nar, past m/f, past 1sg m/f
    "जा": ("जा", "जात", ("जाईल", "जाईन", "जाऊ"), "जाणार", ("गेला", "गेली"), ("गेलो", "गेले")),
    "ये": ("ये", "येत", ("येईल", "येईन", "येऊ"), "येणार", ("आला", "आली"), ("आलो", "आले")),
}


def motion(rng) -> str:
    who, obl, sex = people(rng)
    verb = GO["जा"] if rng.random() < 0.75 else GO["ये"]
    if rng.random() < 0.5:
        city = rng.choice(CITIES)
        dest = city[1] if verb is GO["जा"] else city[1][:-2] + "हून"
        extra = rng.choice([rng.choice(MEANS), rng.choice(PURPOSE), "", ""])
    else:
        dest = rng.choice(DESTS) if verb is GO["जा"] else "घरी"
        extra = rng.choice(LOCAL_MEANS + [""])
    i = G[sex]
    kind = rng.choice(["habit", "past", "fut", "nar", "now", "me", "we", "q", "clock"])
    if kind == "habit":
        parts = [who, rng.choice(T_HABIT), extra, dest, verb[0] + ("तो" if sex == "m" else "ते")]
    elif kind == "past":
        parts = [who, rng.choice(T_PAST), extra, dest, verb[4][i]]
    elif kind == "fut":
        parts = [who, rng.choice(T_FUT), extra, dest, verb[2][0]]
    elif kind == "nar":
        parts = [who, rng.choice(T_FUT), extra, dest, verb[3], "आहे"]
    elif kind == "now":
        parts = [who, rng.choice(T_NOW), extra, dest, verb[1], "आहे"]
    elif kind == "me":
        parts = ["मी", rng.choice(T_PAST), extra, dest, verb[5][rng.randint(0, 1)]]
    elif kind == "we":
        parts = ["आम्ही", rng.choice(T_FUT), extra, dest, verb[2][2]]
    elif kind == "q":
        return (
            " ".join(x for x in [who, dest, rng.choice(["कधी", "कसा" if sex == "m" else "कशी"]), verb[2][0]] if x) + "?"
        )
    else:
        part = rng.choice(list(HOURS))
        when = f"{part} {rng.choice(HOURS[part])} वाजता"
        parts = [who, rng.choice(["उद्या", "रोज"]) if rng.random() < 0.5 else "", when, dest]
        parts += [verb[2][0]] if parts[1] == "उद्या" else [verb[0] + ("तो" if sex == "m" else "ते")]
    return " ".join(x for x in parts if x) + "."


# --- counts: "there are N things in the place", "X has N animals"
PLACES_COUNT = [
    ("आमच्या गावात", "शाळा मंदिरे विहिरी दुकाने तलाव दवाखाने रस्ते"),
    ("या वर्गात", "विद्यार्थी खुर्च्या बाके खिडक्या पंखे"),
    ("आमच्या बागेत", "झाडे गुलाब पक्षी बाके"),
    ("या इमारतीत", "मजले खोल्या कार्यालये घरे"),
    ("या ग्रंथालयात", "पुस्तके कपाटे खुर्च्या मासिके"),
    ("आमच्या शेतात", "गायी बैल शेळ्या कोंबड्या म्हशी विहिरी"),
    ("या शहरात", "बागा रुग्णालये महाविद्यालये चित्रपटगृहे पूल"),
    ("या गाडीत", "प्रवासी डबे खिडक्या"),
]
MANY = {"विद्यार्थी", "पुस्तके", "प्रवासी", "झाडे", "घरे", "मासिके"}  # may number hundreds
OWN = "गायी बैल शेळ्या कोंबड्या मांजरी कुत्रे पुस्तके सायकली गाड्या घड्याळे छत्र्या साड्या सदरे म्हशी".split()


def counts(rng) -> str:
    n = rng.choice(NUMBERS)
    kind = rng.random()
    if kind < 0.45:
        place, things = rng.choice(PLACES_COUNT)
        thing = rng.choice(things.split())
        n = rng.choice(NUMBERS if thing in MANY else NUMBERS[:19])
        return f"{place} {n} {thing} आहेत."
    if kind < 0.75:
        who, obl, _ = people(rng)
        return f"{obl}कडे {rng.choice(NUMBERS[:12])} {rng.choice(OWN)} आहेत."
    if kind < 0.9:
        who, obl, _ = people(rng)
        age = rng.choice(NUMBERS[3:24])
        return f"{obl}चे वय {age} वर्षे आहे."
    place, things = rng.choice(PLACES_COUNT)
    return f"{place} किती {rng.choice(things.split())} आहेत?"


# --- prices: (item, gender for मिळतो/मिळते/मिळतात, measure)
PRODUCE = [
    ("साखर", "f", "एक किलो"),
    ("तांदूळ", "m", "एक किलो"),
    ("कांदे", "p", "एक किलो"),
    ("टोमॅटो", "p", "एक किलो"),
    ("बटाटे", "p", "एक किलो"),
    ("गहू", "m", "एक किलो"),
    ("डाळ", "f", "एक किलो"),
    ("तेल", "n", "एक लिटर"),
    ("दूध", "n", "एक लिटर"),
    ("मीठ", "n", "एक किलो"),
    ("ज्वारी", "f", "एक किलो"),
    ("शेंगदाणे", "p", "एक किलो"),
    ("आंबे", "p", "एक डझन"),
    ("केळी", "p", "एक डझन"),
    ("अंडी", "p", "एक डझन"),
    ("गूळ", "m", "एक किलो"),
    ("चहापत्ती", "f", "अर्धा किलो"),
    ("तूप", "n", "एक किलो"),
]
GET = {"m": "मिळतो", "f": "मिळते", "n": "मिळते", "p": "मिळतात"}


def prices(rng) -> str:
    item, g, measure = rng.choice(PRODUCE)
    n = rng.choice(NUMBERS[8:])
    where = rng.choice(["", "बाजारात", "या दुकानात", "गावात", "शहरात", "आज"])
    if rng.random() < 0.3:
        return f"{where + ' ' if where else ''}{measure} {item} किती रुपयांना आहे?".replace(
            "आहे?", "आहेत?" if g == "p" else "आहे?"
        )
    return " ".join(x for x in [where, measure, item, n, "रुपयांना", GET[g]] if x) + "."


# --- likes, abilities, languages, work
ACTIVITIES = [
    "पोहायला",
    "गायला",
    "नाचायला",
    "चित्र काढायला",
    "क्रिकेट खेळायला",
    "बुद्धिबळ खेळायला",
    "स्वयंपाक करायला",
    "फिरायला",
    "पुस्तके वाचायला",
    "कविता लिहायला",
    "सायकल चालवायला",
    "झाडे लावायला",
    "गोष्टी ऐकायला",
    "बागकाम करायला",
    "डोंगर चढायला",
    "फोटो काढायला",
    "पतंग उडवायला",
    "कबड्डी खेळायला",
    "तबला वाजवायला",
    "बासरी वाजवायला",
    "रांगोळी काढायला",
    "भरतकाम करायला",
]
LANGS = "मराठी हिंदी इंग्रजी कन्नड गुजराती तेलुगू तमिळ बंगाली संस्कृत उर्दू".split()
JOBS = [
    ("शिक्षक", "शिक्षिका"),
    ("डॉक्टर", "डॉक्टर"),
    ("अभियंता", "अभियंता"),
    ("वकील", "वकील"),
    ("लेखक", "लेखिका"),
    ("गायक", "गायिका"),
    ("पत्रकार", "पत्रकार"),
    ("दुकानदार", "दुकानदार"),
    ("चालक", "चालक"),
    ("व्यवस्थापक", "व्यवस्थापक"),
    ("प्राध्यापक", "प्राध्यापिका"),
    ("शास्त्रज्ञ", "शास्त्रज्ञ"),
    ("लिपिक", "लिपिक"),
]
FOODS_LIKED = [
    ("आंबा", "m"),
    ("खिचडी", "f"),
    ("पुरणपोळी", "f"),
    ("चहा", "m"),
    ("कॉफी", "f"),
    ("भेळ", "f"),
    ("श्रीखंड", "n"),
    ("मिसळ", "f"),
    ("वडापाव", "m"),
    ("पिठले", "n"),
    ("शिरा", "m"),
    ("सरबत", "n"),
]
LIKE = {"m": "आवडतो", "f": "आवडते", "n": "आवडते"}


def person_facts(rng) -> str:
    who, obl, sex = people(rng)
    k = rng.random()
    if k < 0.25:
        neg = rng.random() < 0.3
        return f"{obl}ला {rng.choice(ACTIVITIES)} {'आवडत नाही' if neg else 'आवडते'}."
    if k < 0.4:
        food, g = rng.choice(FOODS_LIKED)
        return f"{obl}ला {food} {'खूप ' if rng.random() < 0.4 else ''}{LIKE[g]}."
    if k < 0.55:
        a, b = rng.sample(LANGS, 2)
        if rng.random() < 0.5:
            return f"{obl}ला {a} आणि {b} बोलता येते."
        return f"{obl}ला {a} {rng.choice(['वाचता', 'लिहिता', 'बोलता'])} येते का?"
    if k < 0.8:
        job = rng.choice(JOBS)[G[sex]]
        city = rng.choice(CITIES)[2]
        if rng.random() < 0.5:
            return f"{who} {city} {job} म्हणून काम {'करतो' if sex == 'm' else 'करते'}."
        return f"{who} {rng.choice(['पुढच्या वर्षी', 'लवकरच'])} {job} {'होईल' if rng.random() < 0.5 else 'होणार आहे'}."
    city = rng.choice(CITIES)
    if rng.random() < 0.5:
        since = rng.choice(["सध्या", "लहानपणापासून", "दहा वर्षांपासून", "आता"])
        return f"{who} {since} {city[2]} {'राहतो' if sex == 'm' else 'राहते'}."
    return f"{who} {city[2]} {'कधीपासून राहतो' if sex == 'm' else 'कधीपासून राहते'}?"


# --- conditions and reasons: two clauses
CONDS = [
    "पाऊस पडला तर",
    "ऊन असेल तर",
    "वेळ मिळाला तर",
    "गाडी उशिरा आली तर",
    "सुट्टी मिळाली तर",
    "लवकर काम संपले तर",
    "थंडी वाढली तर",
    "पैसे मिळाले तर",
    "पाहुणे आले तर",
    "रस्ता बंद असेल तर",
]
RESULTS = [
    "आम्ही घरीच राहू",
    "आम्ही सिनेमाला जाऊ",
    "आम्ही बागेत खेळू",
    "आम्ही गावाला जाऊ",
    "आम्ही समुद्रकिनारी फिरायला जाऊ",
    "आम्ही नवीन घर घेऊ",
    "आम्ही लवकर निघू",
    "आम्ही जेवण बनवू",
    "आम्ही गरम चहा पिऊ",
    "आम्ही दुसऱ्या रस्त्याने जाऊ",
    "आम्ही किल्ला पाहायला जाऊ",
    "आम्ही उद्या भेटू",
]
REASONS = [
    "ताप आला होता",
    "खूप काम होते",
    "बरे वाटत नव्हते",
    "गावाला जायचे होते",
    "उशीर झाला होता",
    "परीक्षेचा अभ्यास करायचा होता",
    "डोके दुखत होते",
    "पाहुण्यांना भेटायचे होते",
]
NOT_WENT = ["शाळेत", "कार्यालयात", "बाजारात", "सभेला", "लग्नाला", "सरावाला", "शिकवणीला"]


def clauses(rng) -> str:
    if rng.random() < 0.45:
        return f"{rng.choice(CONDS)} {rng.choice(RESULTS)}."
    who, obl, sex = people(rng)
    went = "गेला" if sex == "m" else "गेली"
    pron = "त्याला" if sex == "m" else "तिला"
    return f"{who} {rng.choice(['आज', 'काल'])} {rng.choice(NOT_WENT)} {went} नाही, कारण {pron} {rng.choice(REASONS)}."


# --- questions and requests at a place
NEAREST = [
    ("बँक", "f"),
    ("दवाखाना", "m"),
    ("रुग्णालय", "n"),
    ("बसस्थानक", "n"),
    ("टपाल कार्यालय", "n"),
    ("पेट्रोल पंप", "m"),
    ("औषधांचे दुकान", "n"),
    ("उपाहारगृह", "n"),
    ("रेल्वे स्थानक", "n"),
    ("पोलीस ठाणे", "n"),
    ("बाजार", "m"),
    ("उद्यान", "n"),
    ("शाळा", "f"),
    ("धर्मशाळा", "f"),
]
NEAR = {"m": "जवळचा", "f": "जवळची", "n": "जवळचे"}
REQUESTS = [
    "दार बंद करा",
    "खिडकी उघडा",
    "दिवा लावा",
    "पंखा बंद करा",
    "इथे सही करा",
    "हळू बोला",
    "रांगेत उभे राहा",
    "तुमचे तिकीट दाखवा",
    "पाणी जपून वापरा",
    "हा अर्ज भरा",
    "बूट बाहेर काढा",
    "मोबाईल बंद ठेवा",
    "कचरा कुंडीत टाका",
    "गाडी इथे लावू नका",
    "उद्या लवकर या",
    "पुन्हा एकदा सांगा",
]


def questions(rng) -> str:
    k = rng.random()
    if k < 0.3:
        place, g = rng.choice(NEAREST)
        opens = "किती वाजता उघडतो" if g == "m" else "किती वाजता उघडते"
        return f"{NEAR[g]} {place} {rng.choice(['कुठे आहे', 'किती दूर आहे', opens])}?"
    if k < 0.55:
        a, b = rng.sample(CITIES, 2)
        return rng.choice(
            [
                f"{a[1]} जाणारी बस किती वाजता सुटते?",
                f"{a[0]} इथून किती किलोमीटर दूर आहे?",
                f"{a[0]} ते {b[0]} रेल्वेने किती तास लागतात?",
                f"{a[1]} जाण्यासाठी कोणता रस्ता चांगला आहे?",
                f"{a[2]} आज हवामान कसे आहे?",
            ]
        )
    if k < 0.75:
        return f"कृपया {rng.choice(REQUESTS)}."
    who, obl, sex = people(rng)
    return rng.choice(
        [
            f"{obl}चा फोन नंबर काय आहे?",
            f"{obl}चे घर कुठे आहे?",
            f"{who} आज इतका उशिरा का आला?" if sex == "m" else f"{who} आज इतकी उशिरा का आली?",
            f"{obl}ने आज जेवण केले का?",
            f"{obl}ला किती भावंडे आहेत?",
            f"{obl}चा वाढदिवस कधी असतो?",
        ]
    )


# --- nature and weather by place and season
SEASONS = ["पावसाळ्यात", "हिवाळ्यात", "उन्हाळ्यात", "जून महिन्यात", "डिसेंबरमध्ये", "दिवाळीत", "मे महिन्यात"]
WEATHER = [
    "खूप पाऊस पडतो",
    "कडाक्याची थंडी असते",
    "खूप उकडते",
    "धुके पडते",
    "नद्यांना पूर येतो",
    "आंब्याला मोहोर येतो",
    "डोंगर हिरवे दिसतात",
    "पर्यटकांची गर्दी असते",
    "शेतात पेरणी होते",
    "पाण्याची टंचाई असते",
    "आकाश निरभ्र असते",
    "जोराचा वारा वाहतो",
]


def nature(rng) -> str:
    where = rng.choice([c[2] for c in CITIES] + ["कोकणात", "विदर्भात", "मराठवाड्यात", "घाटात", "आमच्या गावात"])
    return f"{where} {rng.choice(SEASONS)} {rng.choice(WEATHER)}."


FAMILIES = [
    (transitive, 0.42),
    (motion, 0.18),
    (counts, 0.08),
    (prices, 0.05),
    (person_facts, 0.12),
    (clauses, 0.06),
    (questions, 0.06),
    (nature, 0.03),
]


def compose(target: int, seen: set[str]) -> list[str]:
    rng = random.Random(SEED)
    out: list[str] = []
    per = {f: round(target * w) + 5 for f, w in FAMILIES}
    for family, n in per.items():
        made, tries = 0, 0
        while made < n and tries < 50 * n:
            tries += 1
            s = re.sub(r"\s+", " ", family(rng)).strip()
            if s not in seen and 3 <= len(s.split()) <= 15:
                seen.add(s)
                out.append(s)
                made += 1
    rng.shuffle(out)
    return out[:target]


def main() -> None:
    lines = [x.strip() for x in ASSET.read_text(encoding="utf-8").splitlines()]
    hand = [x for x in lines if x and not x.startswith("#")][:HAND_WRITTEN]
    composed = compose(TARGET, set(hand))
    ASSET.write_text(HEADER + "\n".join(hand + composed) + "\n", encoding="utf-8")
    words = [w for s in hand + composed for w in re.findall(r"[\u0900-\u097f]+", s)]
    print(
        f"{len(hand)} hand-written + {len(composed)} composed = {len(hand) + len(composed)} sentences, "
        f"{len(set(words))} distinct words, {len(words)} words"
    )


if __name__ == "__main__":
    main()
