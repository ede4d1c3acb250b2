//! `ListMetricDescriptors`: not implemented by crius yet (Unimplemented, as kubelet expects
//! of a runtime without it).

use crate::errors::CriResult;
use k8s_cri::v1;

use crate::errors::not_yet;

/// Answers `ListMetricDescriptors`.
pub fn list_metric_descriptors(
    _req: v1::ListMetricDescriptorsRequest,
) -> CriResult<v1::ListMetricDescriptorsResponse> {
    Err(not_yet("ListMetricDescriptors"))
}
