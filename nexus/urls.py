from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularSwaggerView

from adapters_app import apis as adapter_apis
from adapters_app import views as adapter_views
from datasets_app import apis as dataset_apis
from datasets_app import views as dataset_views
from datasets_app.distillation import apis as distill_apis
from datasets_app.distillation import views as distill_views
from deployments_app import apis as deployment_apis
from deployments_app import views as deployment_views
from evaluation_app import apis as evaluation_apis
from evaluation_app import views as evaluation_views
from nexus import apis as nexus_apis
from nexus.health import healthz
from nexus.jobs.api import events_api
from nexus.schema_views import SchemaView
from training_app import apis as training_apis
from training_app import views as training_views

api_v1 = [
    path("models", nexus_apis.BaseModelListApi.as_view(), name="api-models"),
    path("datasets", dataset_apis.DatasetListCreateApi.as_view(), name="api-datasets"),
    path("datasets/convert", dataset_apis.DatasetConvertApi.as_view(), name="api-dataset-convert"),
    path("datasets/<int:dataset_id>", dataset_apis.DatasetDetailApi.as_view(), name="api-dataset"),
    path("datasets/<int:dataset_id>/preview", dataset_apis.DatasetPreviewApi.as_view(), name="api-dataset-preview"),
    path("datasets/<int:dataset_id>/statistics", dataset_apis.DatasetStatisticsApi.as_view(), name="api-dataset-statistics"),
    path("datasets/<int:dataset_id>/validation-errors", dataset_apis.DatasetValidationErrorsApi.as_view(), name="api-dataset-errors"),
    path("datasets/<int:dataset_id>/validate", dataset_apis.DatasetValidateApi.as_view(), name="api-dataset-validate"),
    path("datasets/<int:dataset_id>/duplicates", dataset_apis.DatasetDuplicatesApi.as_view(), name="api-dataset-duplicates"),
    path("datasets/<int:dataset_id>/split", dataset_apis.DatasetSplitApi.as_view(), name="api-dataset-split"),
    path("datasets/<int:dataset_id>/contamination", dataset_apis.DatasetContaminationApi.as_view(), name="api-dataset-contamination"),
    path("datasets/<int:dataset_id>/download", dataset_apis.DatasetDownloadApi.as_view(), name="api-dataset-download"),
    path("datasets/<int:dataset_id>/events", events_api("dataset").as_view(), name="api-dataset-events"),
    path("distillation/jobs", distill_apis.DistillationJobListCreateApi.as_view(), name="api-distill-jobs"),
    path("distillation/jobs/<int:distillation_id>", distill_apis.DistillationJobDetailApi.as_view(), name="api-distill-job"),
    path("distillation/jobs/<int:distillation_id>/preview", distill_apis.DistillationPreviewApi.as_view(), name="api-distill-preview"),
    path("distillation/jobs/<int:distillation_id>/items/<int:item_id>/review", distill_apis.DistillationItemReviewApi.as_view(),
         name="api-distill-review"),
    path("distillation/jobs/<int:distillation_id>/approve", distill_apis.DistillationApproveApi.as_view(), name="api-distill-approve"),
    path("distillation/jobs/<int:distillation_id>/events", events_api("distillation").as_view(), name="api-distill-events"),
    path("distillation/estimate", distill_apis.DistillationEstimateApi.as_view(), name="api-distill-estimate"),
    path("distillation/templates", distill_apis.DistillationTemplateListCreateApi.as_view(), name="api-distill-templates"),
    path("distillation/templates/preview", distill_apis.DistillationTemplatePreviewApi.as_view(),
         name="api-distill-template-preview"),
    path("distillation/templates/<str:template_id>", distill_apis.DistillationTemplateDetailApi.as_view(),
         name="api-distill-template"),
    path("distillation/connections", distill_apis.TeacherConnectionListCreateApi.as_view(), name="api-distill-connections"),
    path("distillation/connections/test", distill_apis.TeacherConfigTestApi.as_view(), name="api-distill-config-test"),
    path("distillation/connections/<int:connection_id>", distill_apis.TeacherConnectionDetailApi.as_view(),
         name="api-distill-connection"),
    path("distillation/connections/<int:connection_id>/test", distill_apis.TeacherConnectionTestApi.as_view(),
         name="api-distill-connection-test"),
    path("distillation/prices", distill_apis.PriceListApi.as_view(), name="api-distill-prices"),
    path("jobs", training_apis.JobListCreateApi.as_view(), name="api-jobs"),
    path("jobs/<int:job_id>", training_apis.JobDetailApi.as_view(), name="api-job"),
    path("jobs/<int:job_id>/events", events_api("training").as_view(), name="api-job-events"),
    path("jobs/<int:job_id>/metrics", training_apis.JobMetricsApi.as_view(), name="api-job-metrics"),
    path("jobs/<int:job_id>/pause", training_apis.JobPauseApi.as_view(), name="api-job-pause"),
    path("jobs/<int:job_id>/checkpoints", training_apis.JobCheckpointsApi.as_view(), name="api-job-checkpoints"),
    path("jobs/<int:job_id>/checkpoint", training_apis.JobCheckpointRequestApi.as_view(), name="api-job-checkpoint"),
    path("jobs/<int:job_id>/checkpoints/<int:step>/adapter", training_apis.JobCheckpointAdapterApi.as_view(),
         name="api-job-checkpoint-adapter"),
    path("jobs/<int:job_id>/resume", training_apis.JobResumeApi.as_view(), name="api-job-resume"),
    path("jobs/<int:job_id>/logs", training_apis.JobLogsApi.as_view(), name="api-job-logs"),
    path("presets", training_apis.PresetListCreateApi.as_view(), name="api-presets"),
    path("presets/<str:preset_id>", training_apis.PresetDetailApi.as_view(), name="api-preset"),
    path("estimate", training_apis.EstimateApi.as_view(), name="api-estimate"),
    path("adapters", adapter_apis.AdapterListApi.as_view(), name="api-adapters"),
    path("adapters/<int:adapter_id>", adapter_apis.AdapterDetailApi.as_view(), name="api-adapter"),
    path("adapters/<int:adapter_id>/deploy", deployment_apis.AdapterDeployApi.as_view(), name="api-adapter-deploy"),
    path("adapters/<int:adapter_id>/compare", evaluation_apis.AdapterCompareApi.as_view(), name="api-adapter-compare"),
    path("eval/compare", evaluation_apis.SessionListCreateApi.as_view(), name="api-eval-sessions"),
    path("eval/compare/<int:session_id>", evaluation_apis.SessionDetailApi.as_view(), name="api-eval-session"),
    path("eval/compare/<int:session_id>/prompts", evaluation_apis.SessionPromptsApi.as_view(), name="api-eval-prompts"),
    path("eval/compare/<int:session_id>/run", evaluation_apis.SessionRunApi.as_view(), name="api-eval-run"),
    path("eval/compare/<int:session_id>/cancel", evaluation_apis.SessionCancelApi.as_view(), name="api-eval-cancel"),
    path("eval/compare/<int:session_id>/rate", evaluation_apis.SessionRateApi.as_view(), name="api-eval-rate"),
    path("eval/compare/<int:session_id>/export", evaluation_apis.SessionExportApi.as_view(), name="api-eval-export"),
    path("eval/compare/<int:session_id>/events", events_api("comparison").as_view(), name="api-eval-events"),
    path("eval/judge", evaluation_apis.JudgeListCreateApi.as_view(), name="api-eval-judges"),
    path("eval/judge/config", evaluation_apis.JudgeConfigApi.as_view(), name="api-eval-judge-config"),
    path("eval/judge/<int:judge_id>", evaluation_apis.JudgeDetailApi.as_view(), name="api-eval-judge"),
    path("eval/judge/<int:judge_id>/events", events_api("judge").as_view(), name="api-eval-judge-events"),
    path("eval/performance", evaluation_apis.PerformanceListCreateApi.as_view(), name="api-eval-performances"),
    path("eval/performance/<int:performance_id>", evaluation_apis.PerformanceDetailApi.as_view(),
         name="api-eval-performance"),
    path("eval/performance/<int:performance_id>/events", events_api("performance").as_view(),
         name="api-eval-performance-events"),
    path("deployments", deployment_apis.DeploymentListCreateApi.as_view(), name="api-deployments"),
    path("deployments/<int:deployment_id>", deployment_apis.DeploymentDetailApi.as_view(), name="api-deployment"),
    path("deployments/<int:deployment_id>/start", deployment_apis.DeploymentStartApi.as_view(), name="api-deployment-start"),
    path("deployments/<int:deployment_id>/stop", deployment_apis.DeploymentStopApi.as_view(), name="api-deployment-stop"),
    path("deployments/<int:deployment_id>/status", deployment_apis.DeploymentStatusApi.as_view(), name="api-deployment-status"),
    path("deployments/<int:deployment_id>/events", events_api("deployment").as_view(), name="api-deployment-events"),
    path("deployments/<int:deployment_id>/logs", deployment_apis.DeploymentLogsApi.as_view(), name="api-deployment-logs"),
    path("deployments/<int:deployment_id>/v1/<path:endpoint>", deployment_apis.DeploymentOpenAIApi.as_view(),
         name="api-deployment-openai"),
    path("adapters/<int:adapter_id>/download", adapter_apis.AdapterDownloadApi.as_view(), name="api-adapter-download"),
    path("adapters/<int:adapter_id>/merge", adapter_apis.AdapterMergeApi.as_view(), name="api-adapter-merge"),
    path("adapters/<int:adapter_id>/export", adapter_apis.AdapterExportApi.as_view(), name="api-adapter-export"),
    path("exports/<int:export_id>", adapter_apis.ExportDetailApi.as_view(), name="api-export"),
    path("exports/<int:export_id>/events", events_api("export").as_view(), name="api-export-events"),
    path("exports/<int:export_id>/download", adapter_apis.ExportDownloadApi.as_view(), name="api-export-download"),
]

pages = [
    path("datasets/", dataset_views.dataset_list_page, name="dataset-list"),
    path("datasets/upload/", dataset_views.dataset_upload_page, name="dataset-upload"),
    path("datasets/<int:dataset_id>/", dataset_views.dataset_detail_page, name="dataset-detail"),
    path("datasets/<int:dataset_id>/preview/", dataset_views.dataset_preview_page, name="dataset-preview"),
    path("datasets/<int:dataset_id>/<slug:action>/", dataset_views.dataset_action_page, name="dataset-action"),
    path("training/", training_views.job_list_page, name="job-list"),
    path("training/new/", training_views.job_new_page, name="job-new"),
    path("training/new/preview/", training_views.job_new_preview_partial, name="job-new-preview"),
    path("training/new/estimate/", training_views.job_new_estimate_partial, name="job-new-estimate"),
    path("training/new/review/", training_views.job_new_review_partial, name="job-new-review"),
    path("training/<int:job_id>/", training_views.job_detail_page, name="job-detail"),
    path("training/<int:job_id>/cancel/", training_views.job_cancel_page, name="job-cancel"),
    path("training/<int:job_id>/pause/", training_views.job_pause_page, name="job-pause"),
    path("training/<int:job_id>/log.txt", training_views.job_log_export_page, name="job-log-export"),
    path("training/<int:job_id>/checkpoints/<int:step>/adapter/", training_views.job_checkpoint_adapter_page,
         name="job-checkpoint-adapter"),
    path("training/<int:job_id>/resume/", training_views.job_resume_page, name="job-resume"),
    path("training/<int:job_id>/checkpoint/", training_views.job_checkpoint_page, name="job-checkpoint"),
    path("training/<int:job_id>/checkpoints/", training_views.job_checkpoints_partial, name="job-checkpoints"),
    path("adapters/", adapter_views.adapter_list_page, name="adapter-list"),
    path("adapters/<int:adapter_id>/", adapter_views.adapter_detail_page, name="adapter-detail"),
    path("adapters/<int:adapter_id>/download/", adapter_views.adapter_download_page, name="adapter-download"),
    path("adapters/<int:adapter_id>/delete/", adapter_views.adapter_delete_page, name="adapter-delete"),
    path("adapters/<int:adapter_id>/exports/", adapter_views.adapter_exports_partial, name="adapter-exports"),
    path("exports/<int:export_id>/download/", adapter_views.export_download_page, name="export-download"),
    path("deployments/", deployment_views.deployment_list_page, name="deployment-list"),
    path("deployments/new/", deployment_views.deployment_new_page, name="deployment-new"),
    path("deployments/<int:deployment_id>/", deployment_views.deployment_detail_page, name="deployment-detail"),
    path("deployments/<int:deployment_id>/start/", deployment_views.deployment_start_page, name="deployment-start"),
    path("deployments/<int:deployment_id>/stop/", deployment_views.deployment_stop_page, name="deployment-stop"),
    path("deployments/<int:deployment_id>/chat/", deployment_views.deployment_chat_page, name="deployment-chat"),
    path("evaluation/", evaluation_views.evaluation_index_page, name="evaluation-index"),
    path("distillation/", distill_views.distillation_list_page, name="distillation-list"),
    path("distillation/connections/", distill_views.connection_create_page, name="distillation-connection-create"),
    path("distillation/connections/<int:connection_id>/test/", distill_views.connection_test_partial,
         name="distillation-connection-test"),
    path("distillation/connections/<int:connection_id>/delete/", distill_views.connection_delete_page,
         name="distillation-connection-delete"),
    path("distillation/templates/<int:template_id>/delete/", distill_views.template_delete_page,
         name="distillation-template-delete"),
    path("distillation/new/", distill_views.distillation_new_page, name="distillation-new"),
    path("distillation/new/test-teacher/", distill_views.teacher_test_partial, name="distillation-new-test"),
    path("distillation/new/template-preview/", distill_views.template_preview_partial, name="distillation-new-preview"),
    path("distillation/new/estimate/", distill_views.estimate_partial, name="distillation-new-estimate"),
    path("distillation/<int:distillation_id>/", distill_views.distillation_detail_page, name="distillation-detail"),
    path("distillation/<int:distillation_id>/items/", distill_views.distillation_items_partial, name="distillation-items"),
    path("distillation/<int:distillation_id>/items/<int:item_id>/review/", distill_views.distillation_item_review_partial,
         name="distillation-item-review"),
    path("distillation/<int:distillation_id>/cancel/", distill_views.distillation_cancel_page, name="distillation-cancel"),
    path("distillation/<int:distillation_id>/approve/", distill_views.distillation_approve_page, name="distillation-approve"),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/finetune/datasets/", permanent=False)),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("finetune/", include(pages)),
    path("api/v1/finetune/", include(api_v1)),
    path("api/schema/", SchemaView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

handler404 = "nexus.errors.handler404"
handler500 = "nexus.errors.handler500"
