"""The pages of a reader's own side of `digest serve` (feedback, rated papers, the archive),
as Jinja templates extending the site's `base.html` (digest.web renders them, autoescaped).
Every URL they show is made by the server (`web._Site.own_url`); every value is escaped.
"""

from __future__ import annotations

PAGES = {
    "feedback.html": """{% extends "base.html" %}{% block body %}
<h1>{{ heading }}</h1>
<p id="paper"><a href="{{ paper.link }}">{{ paper.title }}</a></p>
{% if already %}<p class="muted" id="already">You said so already; nothing new would be
recorded.</p>{% endif %}
<p>This is for {{ email }}. Confirm with the button below.</p>
<form method="post" action="{{ action }}"><button type="submit">{{ button }}</button></form>
{% endblock %}""",
    "feedback_done.html": """{% extends "base.html" %}{% block body %}
<h1>{{ heading }}</h1>
<p id="paper"><a href="{{ paper.link }}">{{ paper.title }}</a></p>
<p>{{ text }}</p>
{% if suggestions %}<h2>Exclude papers like it?</h2>
<p>Papers whose title or abstract has an excluded word never come in your digest. Pick words
of this title to add to your exclude list; you can check them on your preferences page before
anything is saved.</p>
<form method="get" action="{{ base }}/preferences" id="suggest">
<input type="hidden" name="token" value="{{ preferences_token }}">
{% for word in suggestions %}<label><input type="checkbox" name="suggest_exclude"
 value="{{ word }}"> {{ word }}</label><br>
{% endfor %}<p><button type="submit">Review on my preferences page</button></p></form>
{% endif %}
<form method="post" action="{{ switch }}"><p class="muted">Clicked the wrong one?
<button type="submit">{{ switch_button }}</button></p></form>
<p><a href="{{ rated }}">All papers you rated</a></p>
{% endblock %}""",
    "rated.html": """{% extends "base.html" %}{% block body %}
<h1>Papers you rated</h1>
<p class="muted">Your "more like this" and "less like this" clicks, newest first
({{ email }}).</p>
<h2>Papers you liked</h2>
{% if liked %}<ul id="liked">{% for r in liked %}<li><a href="{{ r.listing.link }}">{{
r.listing.title }}</a> <span class="muted">{{ r.at.strftime("%-d %b %Y") }}</span></li>
{% endfor %}</ul>{% else %}<p id="liked">None yet.</p>{% endif %}
<h2>Papers you want fewer like</h2>
{% if disliked %}<ul id="disliked">{% for r in disliked %}<li><a href="{{ r.listing.link
}}">{{ r.listing.title }}</a> <span class="muted">{{ r.at.strftime("%-d %b %Y") }}</span></li>
{% endfor %}</ul>{% else %}<p id="disliked">None yet.</p>{% endif %}
<p><a href="{{ archive }}">Past digests</a></p>
{% endblock %}""",
    "archive.html": """{% extends "base.html" %}{% block body %}
<h1>Your past digests</h1>
<p class="muted">For {{ email }}, newest first.
<a href="{{ feed }}" id="feed">Atom feed</a> (private: it holds your links) &middot;
<a href="{{ rated }}">Papers you rated</a> &middot;
<a href="{{ preferences }}">Manage preferences</a></p>
{% if rows %}<table id="digests"><tr><th>date</th><th>subject</th><th>papers</th></tr>
{% for row, url in rows %}<tr><td>{{ row.local_date.strftime("%a %-d %b %Y") }}</td>
<td><a href="{{ url }}">{{ row.subject }}</a></td><td>{{ row.items }}</td></tr>
{% endfor %}</table>{% else %}<p id="none">No digest has been sent to you yet{% if paged
%} before that{% endif %}.</p>{% endif %}
{% if older %}<p><a href="{{ older }}" id="older">Older digests</a></p>{% endif %}
{% endblock %}""",
}
