from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def evaluation_index_page(request):
    return render(request, "evaluation/index.html")
