from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from adapters_app.selectors import adapter_get, adapter_list


@login_required
def adapter_list_page(request):
    return render(request, "adapters/list.html", {"adapters": adapter_list(user=request.user)})


@login_required
def adapter_detail_page(request, adapter_id: int):
    return render(request, "adapters/detail.html", {"adapter": adapter_get(user=request.user, pk=adapter_id)})
